"""GenDet's losses (Eqs. 1-3, 5).

Reduction: ``(z_t - z_s)^2`` in Eqs. 1 and 3 is a vector per sample. The paper writes the sum over
the batch of that square without saying how the vector is reduced. ``reduction="mean"`` (default)
takes the mean over its elements (the mean squared error), so Eq. 1 and 3 sit on the scale of
Eq. 2's hinge (in [0, M]) whatever the width z_dim; ``"sum"`` is the squared L2 distance (what
this project did before: with z_dim = 784 its gradients were ~170x those of alpha * Eq. 2, and
with one optimizer per student, stage (b) hardly moved). Then the mean over the batch (the
``1/B sum_b``). Eq. 2 is one hinge per sample, averaged over the batch, weighted by ``alpha``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def squared_distance(z_t: torch.Tensor, z_s: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Per-sample ``sum_i (z_t - z_s)_i^2`` (or its mean over i), shape [B]."""
    sq = (z_t.float() - z_s.float()).pow(2).flatten(1)
    return sq.mean(dim=1) if reduction == "mean" else sq.sum(dim=1)


def dis_real(z_t: torch.Tensor, z_s: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq. 1, L_dis^r = 1/B sum_b (z_t - z_s)^2: the student matches the teacher on reals."""
    return squared_distance(z_t, z_s, reduction).mean()


def dis_fake(z_t: torch.Tensor, z_s: torch.Tensor, *, margin: float, alpha: float) -> torch.Tensor:
    """Eq. 2 weighted by alpha: alpha * 1/B sum_b max(M - ||z_t/|z_t| - z_s/|z_s|||^2, 0).

    Pushes the normalised outputs at least sqrt(M) apart on (augmented) fakes; with M = 2 that is
    orthogonal or further. Zero once a sample is far enough."""
    gap = squared_distance(F.normalize(z_t.float(), dim=1), F.normalize(z_s.float(), dim=1))
    return alpha * torch.clamp(margin - gap, min=0).mean()


def dis_augmenter(z_t: torch.Tensor, z_s: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq. 3, L_dis^g: Eq. 1 on N_t(G(x^f)), N_s(G(x^f)); the augmenter minimises it."""
    return dis_real(z_t, z_s, reduction)


def classification(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over (real=0, fake=1): teacher pretraining, classifier N_c, probe."""
    return F.cross_entropy(logits.float(), labels.long())
