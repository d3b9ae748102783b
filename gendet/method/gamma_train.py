"""Training GAMMA on token rows, an epoch at a time, with a state to checkpoint and resume from
(issue 13). Pure torch, no Ray: ``pipelines/train_gamma.py`` runs it in Ray Train workers with DDP.

Targets from ``TokenRows`` (``gamma_targets``):
* image: ``labels`` (1 fake: wholly generated or manipulated anywhere);
* head 1 (manipulation): ``token_mask``, the share of each token's pixels manipulated or generated;
* head 2 (source): ``gendet.method.gamma.source_targets`` of the generated share per token
  (``token_mask`` where the row's ``generated_fraction`` > 0, else 0: copy-move and perturbations
  change pixels no generator made) and the row's family index in ``sources`` =
  ``("camera", *sorted training families)``. A generated row's family (``row_families``) is its
  ``family`` column, or its subset where that is empty (a whole-image fake of a generator).

``fit_gamma`` runs ``gendet.method.gamma.GammaTrainer`` (the network, AdamW, the one-cycle schedule,
the epoch count and the shuffling RNG; its ``state_dict`` round-trips all of them, plain tensors and
numbers that load with ``weights_only=True``), so a run stopped after epoch e and resumed gives the
weights an uninterrupted run gives. With DDP (``wrap``: e.g. ``ray.train.torch.prepare_model`` or
``DistributedDataParallel``) each worker trains on its shard of the rows (``shard_rows``); every
shard has the same size, so every worker takes the same number of steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from gendet.config import check
from gendet.data.manipulations import GENERATED_KINDS
from gendet.method.gamma import GammaConfig, GammaNet, GammaTargets, GammaTrainer, source_targets
from gendet.method.gamma_detector import CAMERA, GammaDetector


def row_families(families: np.ndarray, subsets: np.ndarray, labels: np.ndarray, manipulations: np.ndarray,
                 generated_fraction: np.ndarray) -> np.ndarray:
    """Each row's generator family ("" for rows no generator touched: reals, copy-move, perturb):
    rows generated wholly (a fake without a manipulation) or in part (``GENERATED_KINDS``) with
    ``generated_fraction`` > 0 get their ``family`` column, or their subset when it is empty."""
    manipulations = np.asarray(manipulations, dtype=object)
    generated = (np.asarray(labels) == 1) & (np.asarray(generated_fraction) > 0)
    generated &= (manipulations == "") | np.isin(manipulations, list(GENERATED_KINDS))
    named = np.where(np.asarray(families, dtype=object) != "", families, subsets)
    return np.where(generated, named, "").astype(object)


def source_classes(rows) -> tuple[str, ...]:
    """Head 2's classes for training rows: ``("camera", *sorted families)`` (``row_families``)."""
    fams = row_families(rows.family, rows.subset, rows.labels, rows.manipulation, rows.generated_fraction)
    return (CAMERA, *sorted({f for f in fams if f}))


def gamma_targets(rows, sources: Sequence[str]) -> GammaTargets:
    """The three heads' targets of ``rows`` (module docstring); a family not in ``sources`` is refused."""
    fams = row_families(rows.family, rows.subset, rows.labels, rows.manipulation, rows.generated_fraction)
    index = {name: i for i, name in enumerate(sources)}
    unknown = sorted({f for f in fams if f and f not in index})
    check(not unknown, f"families {unknown} are not source classes {list(sources)}; train with them in the training subsets")
    family = torch.as_tensor(np.array([index[f] if f else 0 for f in fams], dtype=np.int64))
    mask = torch.as_tensor(np.asarray(rows.token_mask, dtype=np.float32))
    generated = torch.where(torch.as_tensor(np.asarray(rows.generated_fraction) > 0)[:, None], mask, torch.zeros_like(mask))
    return GammaTargets(labels=torch.as_tensor(np.asarray(rows.labels, dtype=np.int64)), token_masks=mask,
                        token_sources=source_targets(generated, family))


def shard_rows(n: int, rank: int, world: int) -> np.ndarray:
    """Row indices of worker ``rank`` of ``world``: every world-th row, all shards ``n // world``
    long (DDP needs the same number of steps everywhere; at most world - 1 rows are left out)."""
    check(0 <= rank < world and n >= world, f"{n} rows cannot be shared by {world} workers (rank {rank})")
    return np.arange(n)[rank::world][: n // world]


def trained_detector(trainer: GammaTrainer, sources: Sequence[str], **fields) -> GammaDetector:
    """The trained network as a ``GammaDetector`` (uncalibrated; ``fields``: the variant's
    ``detector_fields``), on the CPU."""
    net = GammaNet.from_spec(trainer.net.spec())
    net.load_state_dict({k: v.detach().cpu() for k, v in trainer.net.state_dict().items()})
    return GammaDetector(net=net.eval(), sources=tuple(sources), **fields)


def fit_gamma(rows, cfg: GammaConfig, *, state: dict | None = None, on_epoch: Callable[[GammaTrainer, dict], None] | None = None,
              rank: int = 0, world: int = 1, device: str = "cpu", wrap=None, sources: Sequence[str] | None = None,
              stop_after: int | None = None) -> tuple[GammaTrainer, tuple[str, ...]]:
    """Train on ``rows`` (``TokenRows``) from ``state`` (None: from scratch) to ``cfg.epochs``,
    calling ``on_epoch(trainer, row)`` after every epoch (checkpoint there); this worker takes
    ``shard_rows(len(rows), rank, world)``. ``stop_after``: return after that many epochs in total
    (tests: an interrupted run). Returns (trainer, source classes)."""
    sources = tuple(sources or source_classes(rows))
    targets = gamma_targets(rows, sources)
    mine = shard_rows(len(rows), rank, world)
    tokens = torch.from_numpy(np.asarray(rows.tokens, dtype=np.float32)[mine])  # a copy: the Arrow buffer is read-only
    mine = torch.as_tensor(mine)
    targets = GammaTargets(targets.labels[mine], targets.token_masks[mine], targets.token_sources[mine])
    trainer = GammaTrainer(cfg, token_dim=rows.token_dim, grid=rows.grid, num_sources=len(sources), rows=len(mine),
                           device=device, wrap=wrap)
    if state is not None:
        trainer.load_state_dict(state)
    while not trainer.done and (stop_after is None or trainer.epoch < stop_after):
        row = trainer.run_epoch(tokens, targets)
        if on_epoch:
            on_epoch(trainer, row)
    return trainer, sources
