"""GenDet's networks (pure torch): teacher N_t, student N_s, augmenter G, classifier N_c, probe.

How a CLIP feature becomes tokens
---------------------------------
An encoder gives one vector of width ``d`` per image, but the paper's networks are transformer
blocks of width 196 (section 4.1). We zero-pad the vector to a multiple of 196 and cut it into
``ceil(d / 196)`` consecutive chunks, each one token of width 196: d=768 -> 4 tokens (16 zeros of
padding), d=512 -> 3 tokens (76 zeros), d=1024 -> 6 tokens. Why this and not a learned projection:
the padding keeps every input coordinate unchanged (nothing is lost or mixed before the block),
and there is no extra learned layer in front of the teacher and student that the adversarial
augmenter could exploit or that would have to be shared between them; the tokens are contiguous
chunks of the feature, so attention mixes information between chunks while the MLP transforms
each chunk.

Each network adds a learned positional embedding (one 196-vector per token, initialised to small
random values). Attention and the token-wise MLP are permutation-equivariant: without it, chunk 0
and chunk 3 would be processed by identical weights with no way to tell them apart, although
coordinate 5 and coordinate 593 of a CLIP feature mean different things.

The output ``z`` of a teacher or student is the token output flattened into one vector of width
``tokens * 196`` (a vector, so Eq. 2's L2 normalisation is over the whole output). The augmenter
maps a feature to a feature of the same width (its output is un-padded back to ``d``); the
classifier reads the discrepancy ``D = (z_t - z_s)^2`` (width ``tokens * 196``) as tokens again.
There is no dropout anywhere, so training is deterministic for a given seed on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from gendet.method.gendet.config import METHODS, STUDENT_METHODS


@dataclass(frozen=True, slots=True)
class Arch:
    """Shape of every GenDet block; saved with each detector so it can be rebuilt."""

    feature_dim: int
    width: int = 196
    layers: int = 1
    heads: int = 4
    mlp_ratio: float = 4.0

    @property
    def tokens(self) -> int:
        return math.ceil(self.feature_dim / self.width)

    @property
    def z_dim(self) -> int:
        return self.tokens * self.width


def to_tokens(x: torch.Tensor, width: int) -> torch.Tensor:
    """[N, d] -> [N, ceil(d/width), width], zero-padding the last token."""
    n, d = x.shape
    pad = (-d) % width
    if pad:
        x = F.pad(x, (0, pad))
    return x.reshape(n, -1, width)


def from_tokens(tokens: torch.Tensor, feature_dim: int) -> torch.Tensor:
    """[N, T, width] -> [N, feature_dim], dropping the padding."""
    return tokens.flatten(1)[:, :feature_dim]


class Attention(nn.Module):
    """Multi-head self-attention written as plain matmuls.

    With a handful of tokens (4 for d=768) the fused attention kernels cost more than the math
    itself on CPU; this is ~30 % faster than ``nn.MultiheadAttention`` there under bf16."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (width // heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, w = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-1, -2) * self.scale).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, t, w))


class Block(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenNet(nn.Module):
    """Positional embedding + ``layers`` blocks over the tokens of a width-``z_dim`` vector.

    Input and output are flat vectors ([N, z_dim] or [N, feature_dim], padded here)."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.arch = arch
        self.pos = nn.Parameter(torch.randn(1, arch.tokens, arch.width) * 0.02)
        self.blocks = nn.Sequential(*[Block(arch.width, arch.heads, arch.mlp_ratio) for _ in range(arch.layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(to_tokens(x, self.arch.width) + self.pos).flatten(1)


class Teacher(TokenNet):
    """N_t (and, with the same shape, the student N_s): feature [N, d] -> z [N, z_dim]."""


Student = Teacher


class TeacherHead(nn.Module):
    """Teacher plus the linear real/fake head used only to pretrain it and for the teacher baseline."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.body = Teacher(arch)
        self.head = nn.Linear(arch.z_dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Augmenter(nn.Module):
    """G: a feature [N, d] -> an augmented feature [N, d], a bounded residual of a block on the
    same tokens::

        G(x) = x + bound * rms(x) * tanh(gate * (T(x) - x)),   rms(x) = ||x|| / sqrt(d)

    so ||G(x) - x|| <= bound * ||x|| for every x (G stays near the feature manifold: an unbounded G
    drifted to ||G(x) - x|| ~ 54 ||x|| in two rotations, where every hinge sits at M whatever the
    student learns), and ``gate`` starts at zero, so G is exactly the identity at init and stage
    (b) of the first rotation trains on the real fakes. The paper does not specify G beyond "a
    transformer block"; the bound is this project's (``TrainConfig.augmenter_bound``)."""

    def __init__(self, arch: Arch, bound: float = 0.5):
        super().__init__()
        self.net = TokenNet(arch)
        self.gate = nn.Parameter(torch.zeros(arch.feature_dim))
        self.bound = float(bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.net.arch.feature_dim
        rms = x.float().pow(2).mean(dim=1, keepdim=True).sqrt().to(x.dtype)
        step = torch.tanh(self.gate * (self.net(x)[:, :d] - x))
        return x + self.bound * rms * step


class Classifier(nn.Module):
    """N_c: discrepancy D [N, z_dim] -> two logits (real, fake); Eq. 5."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.net = TokenNet(arch)
        self.head = nn.Linear(arch.z_dim, 2)

    def forward(self, discrepancy: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(discrepancy))


class LinearProbe(nn.Module):
    """Ojha et al.'s baseline: one linear layer (logistic regression) on the frozen feature."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.linear = nn.Linear(arch.feature_dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def discrepancy(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eq. 4: D = (N_t(x) - N_s(x))^2, elementwise."""
    return (teacher(x) - student(x)).pow(2)


# --- which networks each rung of the ladder scores with: the one copy of the mapping -------------

_SCORING_NETS: dict[str, dict[str, type[nn.Module]]] = {
    "linear_probe": {"probe": LinearProbe},
    "teacher": {"teacher": TeacherHead},
    **{m: {"teacher": Teacher, "student": Student, "classifier": Classifier} for m in STUDENT_METHODS},
}


def scoring_net_types(method: str) -> dict[str, type[nn.Module]]:
    """Name -> class of the networks ``method`` scores with (saved weights are keyed by the names)."""
    if method not in _SCORING_NETS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return _SCORING_NETS[method]


def method_forward(method: str, nets: dict[str, nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(real, fake) logits of ``method``'s scoring networks on features ``x``, and for the
    teacher-student rungs the discrepancy D (Eq. 4) the classifier read (None for the others)."""
    if method == "linear_probe":
        return nets["probe"](x), None
    if method == "teacher":
        return nets["teacher"](x), None
    d = discrepancy(nets["teacher"], nets["student"], x)
    return nets["classifier"](d), d
