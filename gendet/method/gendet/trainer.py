"""The GenDet trainer and its ablation ladder, run in one call on the same data (``train_all``).

The stage plan is ``gendet.method.gendet.schedule.plan``. The rungs have separate students and
classifiers but share the teacher and every data pass, and the frozen teacher's output on a batch is
computed once for all students: a ladder costs far less than five runs, and each rung follows
exactly the schedule it would follow alone. In every stage only the networks being trained have
``requires_grad`` on, and each has its own AdamW holding only its parameters; a student has one for
stage (a) and another for stage (b) (``TrainConfig.student_optimizer``), so the moments of Eq. 1
never scale Eq. 2's steps.

State is small (torchtitan style): the index of the next stage. ``Trainer.train()`` loads the latest
checkpoint (if any) and runs the remaining stages, saving a checkpoint after each and calling
``report(stage_name, metrics, checkpoint_dir)``. Shuffles depend only on (seed, kind, epoch), so a
resumed run gives the same final weights as an uninterrupted one, bit for bit on CPU.

Distributed (Ray Train): pass ``prepare_model=ray.train.torch.prepare_model``; it wraps each network
being trained at the start of its stage. All workers must see the same number of batches per
stage (see ``gendet.features.sources``). Every worker may resume from the same ``resume_from`` (the folder of
``ray.train.get_checkpoint()``) while writing to its own ``checkpoint_dir`` (rank 0's is the one to
pass to ``ray.train.report``); ``report`` is called on every worker after every stage.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gendet.config import ConfigError, to_json
from gendet.features.sources import BatchSource
from gendet.method.gendet import checkpoints as ckpt
from gendet.method.gendet import losses
from gendet.method.gendet.config import TrainConfig
from gendet.method.gendet.detector import Detector, calibrate
from gendet.method.gendet.networks import Arch, Teacher, TeacherHead, scoring_net_types
from gendet.method.gendet.schedule import Stage, build_nets, learning_rate, net_key, optimizer_key, optimizer_keys, plan
from gendet.progress import progress

Report = Callable[[str, dict[str, float], "str | None"], None]
PrepareModel = Callable[[nn.Module], nn.Module]


class _BatchCache:
    """Frozen-network outputs of one batch, computed once and shared by every job of a stage."""

    def __init__(self, nets: dict[str, nn.Module], x: torch.Tensor):
        self.nets, self.x, self._z, self._g = nets, x, None, None

    def teacher_z(self, augmented: bool = False) -> torch.Tensor:
        if augmented:
            if self._g is None:
                with torch.no_grad():
                    g = self.augmented()
                    self._g = (g, self.nets["teacher"].body(g))
            return self._g[1]
        if self._z is None:
            with torch.no_grad():
                self._z = self.nets["teacher"].body(self.x)
        return self._z

    def augmented(self) -> torch.Tensor:
        if self._g is not None:
            return self._g[0]
        with torch.no_grad():
            return self.nets["augmenter"](self.x)


DIAGNOSTIC_EVERY = 8  # gendet's raw-fake discrepancy in stage (b): every 8th batch (Trainer._loss)
DIAGNOSTICS = ("discrepancy", "hinge", "g_shift")  # what a history row may carry besides mean_loss


def _means(extras: tuple[dict[str, torch.Tensor], dict[str, int]] | None) -> dict[str, float]:
    """One stage's diagnostics: each sum read back once and divided by its step count."""
    sums, counts = extras or ({}, {})
    return {key: float(total) / counts[key] for key, total in sums.items()}


@dataclass
class TrainResult:
    detectors: dict[str, Detector]
    history: list[dict[str, Any]] = field(default_factory=list)
    """One row per (stage, job): stage, kind, job, epochs, batches, rows, mean_loss, seconds,
    features_per_s, and the job's ``DIAGNOSTICS`` (discrepancy, hinge, g_shift) where it has them."""
    config: TrainConfig | None = None


class Trainer:
    """Builds the networks and optimizers for ``cfg`` and runs (or resumes) its stage plan."""

    def __init__(self, cfg: TrainConfig, source: BatchSource, *, checkpoint_dir: str | None = None,
                 report: Report | None = None, prepare_model: PrepareModel | None = None, device: str = "cpu",
                 resume_from: str | None = None):
        self.cfg, self.source, self.checkpoint_dir = cfg, source, checkpoint_dir
        self.resume_from = resume_from or checkpoint_dir
        self.report, self.prepare_model = report, prepare_model or (lambda net: net)
        self.device = torch.device(device)
        self.arch = Arch(feature_dim=source.dim, width=cfg.width, layers=cfg.layers, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio)
        torch.manual_seed(cfg.seed)
        self.nets = {k: n.to(self.device) for k, n in build_nets(cfg, self.arch).items()}
        # fused: one kernel per step instead of ~10 small ops per tensor, which on busy shared cores
        # spend more time synchronising threads than computing
        fused = self.device.type in ("cpu", "cuda")
        self.opts = {k: torch.optim.AdamW(self.nets[n].parameters(), lr=learning_rate(cfg, n), weight_decay=cfg.weight_decay,
                                          fused=fused) for k, n in optimizer_keys(cfg, self.nets).items()}
        self.stages = plan(cfg)
        self.next_stage = 0
        self.history: list[dict[str, Any]] = []

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"config": to_json(self.cfg), "next_stage": self.next_stage, "rng": torch.get_rng_state(),
                "nets": {k: n.state_dict() for k, n in self.nets.items()},
                "opts": {k: o.state_dict() for k, o in self.opts.items()}, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != to_json(self.cfg):
            raise ConfigError(f"{self.resume_from}: its checkpoints were written with another config; "
                              "use a fresh checkpoint directory or the same config")
        for k, n in self.nets.items():
            n.load_state_dict(state["nets"][k])
        for k, o in self.opts.items():
            o.load_state_dict(state["opts"][k])
        torch.set_rng_state(state["rng"])
        self.next_stage, self.history = int(state["next_stage"]), list(state["history"])

    # -- running -----------------------------------------------------------------------------
    def train(self) -> list[dict[str, Any]]:
        """Resume from the latest checkpoint (if any) and run the remaining stages."""
        latest = ckpt.load_latest(self.resume_from)
        if latest is not None:
            self.load_state_dict(latest)
        while self.next_stage < len(self.stages):
            stage = self.stages[self.next_stage]
            rows = self.run_stage(stage, first_epoch=self._epoch_offset(self.next_stage))
            self.history.extend(rows)
            self.next_stage += 1
            if self.checkpoint_dir:
                ckpt.save_checkpoint(self.checkpoint_dir, self.next_stage, self.state_dict(), keep=self.cfg.keep_checkpoints)
            if self.report is not None:
                diagnostics = {f"{r['job']}/{k}": r[k] for r in rows for k in DIAGNOSTICS if k in r}
                self.report(stage.name, {f"{r['job']}/loss": r["mean_loss"] for r in rows} | diagnostics
                            | {"features_per_s": rows[0]["features_per_s"] if rows else 0.0}, self.checkpoint_dir)
        return self.history

    def _epoch_offset(self, index: int) -> int:
        """A distinct epoch number for every pass of the plan, so every pass gets its own shuffle."""
        return sum(s.epochs for s in self.stages[:index])

    def _set_trainable(self, keys: set[str]) -> dict[str, nn.Module]:
        for key, net in self.nets.items():
            net.requires_grad_(key in keys)
        return {key: self.prepare_model(self.nets[key]) for key in sorted(keys)}

    def run_stage(self, stage: Stage, *, first_epoch: int) -> list[dict[str, Any]]:
        live = self._set_trainable({net_key(j) for j in stage.jobs})
        # Losses are summed on the device: reading each one back would synchronise a GPU every step.
        totals = {j: torch.zeros((), device=self.device) for j in stage.jobs}
        # diagnostics per job (see _loss): {job: ({name: sum on the device}, {name: steps summed})}
        extras: dict[str, tuple[dict[str, torch.Tensor], dict[str, int]]] = {}
        steps, rows_seen, start = 0, 0, time.perf_counter()
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.precision == "bf16"
                    else contextlib.nullcontext())
        bar = progress(total=self._batches(stage), desc=f"{stage.name} ({stage.kind})", unit="batch", leave=False)
        for epoch in range(stage.epochs):
            for x, y in self.source.batches(stage.kind, first_epoch + epoch):
                bar.update(1)
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                cache = _BatchCache(self.nets, x)
                for job in stage.jobs:
                    with autocast:
                        loss, diagnostics = self._loss(job, live, cache, y, step=steps)
                    opt = self.opts[optimizer_key(self.cfg, job)]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    totals[job] += loss.detach()
                    for key, value in diagnostics.items():
                        sums, counts = extras.setdefault(job, ({}, {}))
                        sums[key] = sums.get(key, 0) + value
                        counts[key] = counts.get(key, 0) + 1
                steps += 1
                rows_seen += len(y)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        bar.close()
        self.nets_requires_grad_off()
        return [{"stage": stage.name, "kind": stage.kind, "job": job, "epochs": stage.epochs, "batches": steps,
                 "rows": rows_seen, "mean_loss": float(total) / max(steps, 1), "seconds": seconds,
                 "features_per_s": rows_seen / seconds if seconds > 0 else 0.0,
                 **_means(extras.get(job))}
                for job, total in totals.items()]

    def _batches(self, stage: Stage) -> int | None:
        """The stage's batches, for its progress display (None when the source cannot say)."""
        if not hasattr(self, "_rows"):
            self._rows = getattr(self.source, "rows", None) or (self.source.counts() if hasattr(self.source, "counts") else None)
        if not self._rows:
            return None
        n = sum(self._rows.values()) if stage.kind == "all" else self._rows.get(stage.kind, 0)
        return -(-n // self.cfg.batch_size) * stage.epochs

    def nets_requires_grad_off(self) -> None:
        for net in self.nets.values():
            net.requires_grad_(False)

    def _loss(self, job: str, live: dict[str, nn.Module], cache: _BatchCache, y: torch.Tensor, *,
              step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The job's loss and its diagnostics (0-d device tensors, read once per stage): real.M
        ``discrepancy`` on reals; fake.M ``hinge`` (Eq. 2 without alpha) and raw-fake ``discrepancy``
        (gendet: every ``DIAGNOSTIC_EVERY``-th batch, two extra forwards); augmenter ``g_shift``.
        All from the step's own forward: extra forwards per step cost ~25 % (train-cpu2-pt214.md)."""
        what, _, method = job.partition(".")
        net = live[net_key(job)]
        if what in ("teacher", "probe"):
            return losses.classification(net(cache.x), y), {}
        if what == "real":
            z_t, z_s = cache.teacher_z(), net(cache.x)
            with torch.no_grad():
                diagnostics = {"discrepancy": losses.squared_distance(z_t, z_s.detach(), "mean").mean()}
            return losses.dis_real(z_t, z_s, self.cfg.loss_reduction), diagnostics
        if what == "fake":
            augmented = method == "gendet"  # ts_fake: G is the identity
            z_t, z_s = cache.teacher_z(augmented), net(cache.augmented() if augmented else cache.x)
            with torch.no_grad():
                diagnostics = {"hinge": losses.dis_fake(z_t, z_s.detach(), margin=self.cfg.margin, alpha=1.0)}
                if not augmented:
                    diagnostics["discrepancy"] = losses.squared_distance(z_t, z_s.detach(), "mean").mean()
                elif step % DIAGNOSTIC_EVERY == 0:
                    student = self.nets[f"student.{method}"]  # not DDP's wrapper: no collective for a diagnostic
                    diagnostics["discrepancy"] = losses.squared_distance(cache.teacher_z(), student(cache.x), "mean").mean()
            loss = losses.dis_fake(z_t, z_s, margin=self.cfg.margin, alpha=self.cfg.alpha)
            return loss, diagnostics
        if what == "augmenter":
            g = net(cache.x)  # gradients flow through the frozen teacher and student into G
            with torch.no_grad():
                x = cache.x.float()
                diagnostics = {"g_shift": ((g.detach().float() - x).norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)).mean()}
            loss = losses.dis_augmenter(self.nets["teacher"].body(g), self.nets["student.gendet"](g),
                                        self.cfg.loss_reduction)
            return loss, diagnostics
        if what == "classifier":
            d, y = self._discrepancies(method, cache, y)
            return losses.classification(net(d), y), {}
        raise ValueError(f"unknown job {job!r}")

    def _discrepancies(self, method: str, cache: _BatchCache, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 4's D and labels for N_c. ``classifier_input``: ``raw`` features of both classes;
        ``augmented`` reals and G(fakes); ``both`` reals, raw fakes and G(fakes). G exists for the
        gendet rung only (the others have no augmenter, so they always read raw features)."""
        student = self.nets[f"student.{method}"]
        with torch.no_grad():  # the teacher's output is shared by every rung
            d = (cache.teacher_z() - student(cache.x)).pow(2)
            choice = self.cfg.classifier_input if method == "gendet" else "raw"
            if choice == "raw":
                return d, y
            fake = y == 1
            d_aug = (cache.teacher_z(augmented=True) - student(cache.augmented())).pow(2)[fake]
            if choice == "augmented":
                return torch.cat([d[~fake], d_aug]), torch.cat([y[~fake], y[fake]])
            return torch.cat([d, d_aug]), torch.cat([y, y[fake]])

    # -- results -----------------------------------------------------------------------------
    def detector(self, method: str, **info: Any) -> Detector:
        """A self-contained copy of the networks ``method`` needs to score features."""
        nets = {}
        for name, cls in scoring_net_types(method).items():
            net = self.nets[{"student": f"student.{method}", "classifier": f"classifier.{method}"}.get(name, name)]
            if cls is Teacher and isinstance(net, TeacherHead):  # the students' rungs score with its body
                net = net.body
            nets[name] = copy.deepcopy(net).cpu().eval()
        return Detector(method=method, arch=self.arch, nets=nets, **info)


def check_source(cfg: TrainConfig, source: BatchSource) -> None:
    """Fail before any work when the training rows cannot train a detector."""
    counts = source.counts() if hasattr(source, "counts") else None
    if counts is None:
        return
    where = f"train subsets {list(cfg.train_subsets) or 'all'}, splits {list(cfg.train_splits)}"
    if counts.get("real", 0) + counts.get("fake", 0) == 0:
        raise ConfigError(f"training data: no rows in {where}; check --train-subsets and the split column")
    for label in ("real", "fake"):
        if counts.get(label, 0) == 0:
            raise ConfigError(f"training data: no {label} rows in {where}; every method needs both real and fake rows")


def check_calibration(cfg: TrainConfig, source: BatchSource) -> None:
    """Fail before any work when the calibration rows (``cfg.calibration_rows()``) cannot set a
    threshold: no reals (nor, with Platt scaling, no fakes)."""
    counts = source.counts() if hasattr(source, "counts") else None
    if counts is None:
        return
    needed = ("real", "fake") if cfg.calibration == "platt" else ("real",)
    missing = [label for label in needed if counts.get(label, 0) == 0]
    if missing:
        fix = ("raise calibration_holdout (--set calibration_holdout=0.2)" if cfg.calibration_split == "train_holdout"
               else "use --set calibration_split=train_holdout")
        raise ConfigError(f"calibration data ({cfg.calibration_split}): no {' or '.join(missing)} rows; {fix}")


def calibration_record(source: BatchSource) -> tuple[tuple[str, ...] | None, dict[str, int] | None]:
    """(the subsets, {label: rows}) of a calibration source, what a detector records of its
    calibration; subsets None for a source that has no subset column (in-memory tensors)."""
    if hasattr(source, "table"):
        table = source.table(columns=("subset", "label"))
        labels = table["label"].to_pylist()
        return tuple(sorted(set(table["subset"].to_pylist()))), {k: labels.count(k) for k in ("real", "fake")}
    counts = source.counts() if hasattr(source, "counts") else None
    return None, dict(counts) if counts else None


def train_all(cfg: TrainConfig, source: BatchSource, *, checkpoint_dir: str | None = None,
              report: Report | None = None, prepare_model: PrepareModel | None = None, device: str = "cpu",
              calibration: BatchSource | None = None, encoder: str | None = None, encoder_weights: str = "",
              preprocess_hash: str | None = None, resume_from: str | None = None,
              encoder_weights_digest: str = "", encoder_precision: str = "") -> TrainResult:
    """Train every method of ``cfg.methods`` on ``source``; one ``Detector`` per method.

    When ``calibration`` is given (held-out rows: ``ParquetSource(url, **cfg.calibration_rows())``,
    never rows that are scored later), each detector's threshold is set from its scores on those
    reals for ``cfg.target_fpr`` (``gendet.eval.metrics``), after Platt scaling fitted on its rows
    (``cfg.calibration``), and ``cfg.calibration_split`` is recorded as the detector's (None while
    it is ``auto``: the caller chose the rows); otherwise the threshold stays 0.5. Detectors record the
    store variant's fields (``**Variant.detector_fields()``; encoder, preprocess_hash: else the source's)."""
    check_source(cfg, source)
    trainer = Trainer(cfg, source, checkpoint_dir=checkpoint_dir, report=report, prepare_model=prepare_model,
                      device=device, resume_from=resume_from)
    history = trainer.train()
    info = {"encoder": encoder if encoder is not None else getattr(source, "encoder", ""),
            "preprocess_hash": preprocess_hash if preprocess_hash is not None else getattr(source, "preprocess_hash", "")}
    detectors = {m: trainer.detector(m, **info, encoder_weights=encoder_weights, encoder_precision=encoder_precision,
                                     encoder_weights_digest=encoder_weights_digest) for m in cfg.methods}
    if calibration is not None:
        subsets, rows = calibration_record(calibration)
        for det in detectors.values():
            calibrate(det, calibration, cfg.target_fpr, platt=cfg.calibration == "platt", target_miss=cfg.target_miss)
            det.calibration_split = None if cfg.calibration_split == "auto" else cfg.calibration_split
            det.calibration_subsets, det.calibration_rows = subsets, rows
    return TrainResult(detectors=detectors, history=history, config=cfg)
