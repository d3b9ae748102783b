"""Training GAMMA on token rows, an epoch at a time, with a state to checkpoint and resume from
. Pure torch, no Ray: ``pipelines/train_gamma.py`` runs it in Ray Train workers with DDP.

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

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from gendet.config import check
from gendet.data.manipulations import GENERATED_KINDS
from gendet.method.gamma.config import GammaConfig
from gendet.method.gamma.detector import CAMERA, GammaDetector
from gendet.method.gamma.losses import GammaTargets, gamma_loss, source_targets
from gendet.method.gamma.networks import GammaNet
from gendet.progress import progress


class GammaTrainer:
    """GAMMA's epoch loop with a resumable state: the network (``wrap``: DDP, e.g. Ray Train's
    ``prepare_model``), AdamW, the one-cycle schedule, the epoch count and the shuffling RNG, all in
    ``state_dict`` (plain tensors and numbers: a checkpoint loads with ``weights_only=True``).
    ``rows`` is the number of training rows this process steps through per epoch (its shard's)."""

    def __init__(self, cfg: GammaConfig, *, token_dim: int, grid: tuple[int, int], num_sources: int, rows: int,
                 device: str = "cpu", wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None):
        check(rows >= 1, "no training rows")
        torch.manual_seed(cfg.seed)
        self.cfg, self.rows, self.device = cfg, rows, torch.device(device)
        self.net = GammaNet(token_dim, tuple(grid), num_sources, cfg).to(self.device)
        self.model = wrap(self.net) if wrap else self.net
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * math.ceil(rows / cfg.batch_size)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
        self.order = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self.history: list[dict[str, float]] = []

    @property
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def run_epoch(self, tokens: torch.Tensor, targets: GammaTargets) -> dict[str, float]:
        """One pass over ``tokens`` [rows, T, D] in a fresh random order; returns the epoch's mean losses."""
        n, cfg = tokens.shape[0], self.cfg
        check(n == self.rows, f"the trainer was built for {self.rows} rows per epoch, got {n}")
        seg = cfg.seg_heads
        sums: dict[str, float] = {}
        self.model.train()
        perm = torch.randperm(n, generator=self.order)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            out = self.model(tokens[idx].to(self.device).float())
            masks = targets.token_masks[idx].to(self.device) if seg else None
            sources = targets.token_sources[idx].to(self.device) if seg else None
            loss, parts = gamma_loss(out, targets.labels[idx].to(self.device), masks, sources, cfg)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx) / n
        row = {"epoch": self.epoch, **sums}
        self.history.append(row)
        self.epoch += 1
        return row

    def state_dict(self) -> dict:
        return {"net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "epoch": self.epoch, "order_rng": self.order.get_state(),
                "torch_rng": torch.get_rng_state(), "history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.order.set_state(state["order_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.history = [dict(r) for r in state.get("history", [])]


def train_gamma(tokens: torch.Tensor, labels: torch.Tensor, *, grid: tuple[int, int], cfg: GammaConfig,
                token_masks: torch.Tensor | None = None, token_sources: torch.Tensor | None = None,
                num_sources: int = 2, log=None) -> tuple[GammaNet, list[dict[str, float]]]:
    """Train GAMMA on in-memory tensors: ``tokens`` [N, T, D], ``labels`` [N] (1 = fake),
    ``token_masks`` [N, T] (head 1's targets in [0, 1]; needed with ``seg_heads``),
    ``token_sources`` [N, T] (head 2's classes in 0..num_sources-1; all-camera for reals and
    all-zero-generated when None). Deterministic for a seed on CPU. Returns (net in eval mode,
    one dict of mean losses per epoch). (``GammaTrainer``; ``gendet.method.gamma.trainer`` trains
    on a token store's rows, resumably.)"""
    n, t, d = tokens.shape
    check(labels.shape == (n,), f"labels must be [{n}], got {tuple(labels.shape)}")
    if cfg.seg_heads:
        check(token_masks is not None and token_masks.shape == (n, t),
              f"seg_heads needs token_masks [{n}, {t}]; pass them or set seg_heads=False")
        if token_sources is None:
            token_sources = torch.zeros(n, t, dtype=torch.long)
        check(token_sources.shape == (n, t) and int(token_sources.max()) < num_sources and int(token_sources.min()) >= 0,
              f"token_sources must be [{n}, {t}] with classes in 0..{num_sources - 1}")
    trainer = GammaTrainer(cfg, token_dim=d, grid=grid, num_sources=num_sources, rows=n)
    targets = GammaTargets(labels, token_masks, token_sources)
    while not trainer.done:
        row = trainer.run_epoch(tokens, targets)
        if log:
            log(row)
    return trainer.net.eval(), trainer.history


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
    last = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    with progress(total=max(0, last - trainer.epoch), desc=f"GAMMA ({len(mine)} rows)", unit="epoch") as bar:
        while not trainer.done and (stop_after is None or trainer.epoch < stop_after):
            row = trainer.run_epoch(tokens, targets)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if on_epoch:
                on_epoch(trainer, row)
    return trainer, sources


def training_sources(training) -> tuple[str, ...]:
    """Head 2's classes (``source_classes``) of a ``ParquetSource`` of training rows, from their label
    and manipulation columns (no tokens read): decided once, so every worker and every resume agree."""
    from types import SimpleNamespace

    cols = training.table(None, columns=["family", "subset", "label", "manipulation", "generated_fraction"]).to_pydict()
    text = {k: np.asarray([v or "" for v in cols[k]], dtype=object) for k in ("family", "subset", "manipulation")}
    fraction = np.asarray([0.0 if v is None else v for v in cols["generated_fraction"]], dtype=np.float32)
    labels = (np.asarray(cols["label"], dtype=object) == "fake").astype(int)
    return source_classes(SimpleNamespace(**text, labels=labels, generated_fraction=fraction))

