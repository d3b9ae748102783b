"""``TrainConfig``: every knob of a GenDet training run, checked before any work starts.

Defaults are the paper's (section 4.1): transformer blocks of width 196, one layer, four heads,
MLP ratio 4; margin M = 2.0; ten rotations of three one-epoch stages; AdamW. The two presets
carry the paper's learning rates per benchmark::

    preset("genimage")  teacher 1e-5, student 1e-5, classifier 1e-3
    preset("ufd")       teacher 1e-5, student 1e-4, classifier 1e-5

The paper does not give the augmenter's learning rate. We use the student's rate: G and the
student are the two adversaries of stages (b) and (c), and equal rates keep either from
overpowering the other in one epoch. ``alpha`` weights Eq. 2 in stage (b); the paper does not give
its value in section 4.1, and 0.1 is this project's default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from gendet.config import ConfigError, check, check_finite
from gendet.config import replace as _replace

METHODS = ("linear_probe", "teacher", "ts_real", "ts_fake", "gendet")
"""The ablation ladder, cheapest first: Ojha et al.'s linear probe, the teacher alone, a
teacher-student trained on reals only, one trained on reals and fakes without the augmenter, and
GenDet (the networks: ``gendet.method.gendet.networks``)."""

STUDENT_METHODS = ("ts_real", "ts_fake", "gendet")

__all__ = ["METHODS", "PRESETS", "STUDENT_METHODS", "TrainConfig", "preset", "preset_names", "replace",
           "resolve_calibration_split"]

@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    methods: tuple[str, ...] = METHODS
    """Which rungs of the ladder to train; they share one teacher and the same data passes."""
    train_subsets: tuple[str, ...] = ()
    """Feature-store ``subset`` values to train on (e.g. the seen generator); empty = all."""
    train_splits: tuple[str, ...] = ("train",)
    """Feature-store ``split`` values to train on."""
    width: int = 196
    """Transformer width; a feature of width d becomes ceil(d / width) tokens (gendet.method.gendet.networks)."""
    layers: int = 1
    """Transformer blocks per network."""
    heads: int = 4
    """Attention heads per block."""
    mlp_ratio: float = 4.0
    """MLP expansion ratio of each block."""
    margin: float = 2.0
    """M in Eq. 2: the wanted minimal squared distance of L2-normalised teacher/student outputs."""
    alpha: float = 0.1
    """Weight of Eq. 2 (L_dis^f) in stage (b)."""
    augmenter_bound: float = 0.5
    """G's reach: ||G(x) - x|| <= augmenter_bound * ||x|| (G is a bounded residual, the identity at
    init; gendet.method.gendet.networks.Augmenter). The paper does not bound G."""
    classifier_input: Literal["raw", "augmented", "both"] = "raw"
    """What N_c trains on (Eq. 4): discrepancies of the raw features of both classes (``raw``); of
    reals and G(fakes) (``augmented``, the paper's z^f = N(G(x^f)) read literally); or of reals,
    raw fakes and G(fakes) (``both``). The paper is ambiguous. Measured on the demo's features over 3
    seeds (experiments/results/demo-seeds-cpu2*.md), gendet's unseen accuracy: raw 88.5 +- 2.2,
    augmented 87.8 +- 2.7, both 87.5 +- 1.8: no gain from G's features, so ``raw`` stays the default."""
    student_optimizer: Literal["per_stage", "shared"] = "per_stage"
    """``per_stage``: each student has one AdamW for stage (a) and another for stage (b), so Adam's
    moments of Eq. 1 never shrink Eq. 2's steps (with one shared AdamW, stage (b) moved the student
    ~100x less). Under a per-stage Adam, alpha only rescales a loss trained alone and has no effect
    (Adam is scale-invariant); ``shared`` keeps one AdamW per student across (a) and (b), where
    alpha sets Eq. 2's step size relative to Eq. 1's (the paper's Table 5 knob)."""
    loss_reduction: Literal["mean", "sum"] = "mean"
    """How Eq. 1 and Eq. 3 reduce (z_t - z_s)^2 over its elements: ``mean`` keeps them on Eq. 2's
    scale; ``sum`` is the squared L2 distance (gendet.method.gendet.losses)."""
    rotations: int = 10
    """How many times stages (a) student-on-real, (b) student-on-G(fake), (c) augmenter run."""
    teacher_epochs: int = 1
    """Epochs of teacher pretraining (the linear probe trains in the same passes)."""
    stage_epochs: int = 1
    """Epochs of each stage (a), (b), (c) within a rotation."""
    classifier_epochs: int = 1
    """Epochs of classifier training on the discrepancies."""
    teacher_lr: float = 1e-5
    """AdamW learning rate of the teacher and its head."""
    student_lr: float = 1e-5
    """AdamW learning rate of the students (stages a and b)."""
    augmenter_lr: float = 1e-5
    """AdamW learning rate of the augmenter G (stage c); the paper is silent: = student_lr."""
    classifier_lr: float = 1e-3
    """AdamW learning rate of the classifier N_c."""
    probe_lr: float = 1e-3
    """AdamW learning rate of the linear probe (a torch logistic regression on the stream)."""
    weight_decay: float = 0.01
    """AdamW weight decay of every optimizer (torch's default)."""
    batch_size: int = 256
    """Rows per optimisation step, per worker."""
    seed: int = 0
    """Seeds the initial weights and every epoch's shuffle: same seed, same weights."""
    feature_dtype: Literal["float16", "float32"] = "float16"
    """dtype the streaming reader holds features in while shuffling (``ParquetSource(dtype=...)``);
    float16 halves the buffer. Batches reach the networks as float32 (or bf16 under autocast)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Compute precision; bf16 autocast helps on CPUs with AVX-512 BF16 and on GPUs."""
    calibration: Literal["platt", "none"] = "platt"
    """Scores as probabilities: Platt scaling fitted on the held-out calibration rows of both classes
    (``platt``), or the networks' raw softmax (``none``); the threshold is then set on those reals."""
    calibration_split: Literal["auto", "val", "train_holdout"] = "auto"
    """The rows thresholds and Platt scaling are fitted on, never the rows scored: ``val`` (the
    store's val split of the training subsets and ``calibration_subsets``); ``train_holdout``
    (``calibration_holdout`` of the training rows' content_ids, chosen by a stable hash and left
    out of training; the training subsets only); ``auto``: ``val`` unless val is among the scored
    splits (GenImage has only train and val, so its users score val) or the store has no val rows,
    then ``train_holdout``. A run records the resolved choice (``resolve_calibration_split``), the
    subsets and the row counts in its params and detector.json."""
    calibration_subsets: tuple[str, ...] = ()
    """Subsets whose val rows calibrate too, beside the training subsets' (``val`` only): sources
    named on purpose, e.g. a team's own reals. Never by default: calibrating on the val fakes of the
    families reported as unseen moves the threshold toward them (it did until 0.8.0)."""
    calibration_holdout: float = 0.1
    """Fraction of the training content_ids held out for calibration under ``train_holdout``
    (a photo and its crops are one content_id: they stay together)."""
    target_fpr: float = 0.05
    """False-positive rate on held-out reals used to calibrate each detector's threshold."""
    target_miss: float = 0.05
    """Share of held-out fakes allowed below the uncertain band (called ``real``): the band's lower edge."""
    keep_checkpoints: int = 2
    """How many stage checkpoints to keep (the latest ones); resume needs only the last."""
    shots: tuple[str, ...] = ()
    """Few-shot training subsets, ``SUBSET=N`` each (``--shots sdedit=64``): at most N of that
    subset's training fakes and N of its reals, the first in the order of a stable hash of
    ``content_id`` (``gendet.features.sources.shot_keys``: the same rows on every run, a photo's
    crops taken together). SUBSET must be a training subset. The calibration rows are unchanged."""

    def __post_init__(self) -> None:
        check_finite(self)
        check(len(self.methods) > 0, "methods: empty; choose from " + ", ".join(METHODS))
        unknown = [m for m in self.methods if m not in METHODS]
        check(not unknown, f"methods: unknown {unknown}; choose from {', '.join(METHODS)}")
        check(len(set(self.methods)) == len(self.methods), f"methods: duplicates in {self.methods}")
        check(len(self.train_splits) > 0, "train_splits: empty; give at least one split, e.g. train")
        for name in ("width", "layers", "heads", "rotations", "teacher_epochs", "stage_epochs",
                     "classifier_epochs", "batch_size", "keep_checkpoints"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, f"{name}: {value!r}; must be a positive integer")
        check(self.width % self.heads == 0, f"heads: {self.heads} does not divide width {self.width}")
        check(self.mlp_ratio > 0, f"mlp_ratio: {self.mlp_ratio}; must be > 0")
        check(self.margin >= 0, f"margin: {self.margin}; M must be >= 0 (the paper uses 2.0)")
        check(self.alpha >= 0, f"alpha: {self.alpha}; must be >= 0")
        check(self.augmenter_bound > 0, f"augmenter_bound: {self.augmenter_bound}; must be > 0")
        check(self.classifier_input in ("raw", "augmented", "both"),
              f"classifier_input: {self.classifier_input!r}; use raw, augmented or both")
        check(self.student_optimizer in ("per_stage", "shared"),
              f"student_optimizer: {self.student_optimizer!r}; use per_stage or shared")
        check(self.loss_reduction in ("mean", "sum"), f"loss_reduction: {self.loss_reduction!r}; use mean or sum")
        for name in ("teacher_lr", "student_lr", "augmenter_lr", "classifier_lr", "probe_lr"):
            check(getattr(self, name) > 0, f"{name}: {getattr(self, name)}; must be > 0")
        check(self.weight_decay >= 0, f"weight_decay: {self.weight_decay}; must be >= 0")
        check(self.feature_dtype in ("float16", "float32"), f"feature_dtype: {self.feature_dtype!r}; use float16 or float32")
        check(self.precision in ("fp32", "bf16"), f"precision: {self.precision!r}; use fp32 or bf16")
        check(self.calibration in ("platt", "none"), f"calibration: {self.calibration!r}; use platt or none")
        check(0 < self.target_fpr < 1, f"target_fpr: {self.target_fpr}; must be in (0, 1)")
        check(0 < self.target_miss < 1, f"target_miss: {self.target_miss}; must be in (0, 1)")
        check(self.calibration_split in ("auto", "val", "train_holdout"),
              f"calibration_split: {self.calibration_split!r}; use auto, val or train_holdout")
        check(isinstance(self.calibration_holdout, (int, float)) and 0 < self.calibration_holdout < 1,
              f"calibration_holdout: {self.calibration_holdout!r}; must be a fraction in (0, 1), e.g. 0.1")
        limits = self.shot_limits  # parses every SUBSET=N
        unknown = [s for s in limits if self.train_subsets and s not in self.train_subsets]
        check(not unknown, f"shots: {unknown} not among the training subsets {list(self.train_subsets)}; "
                           "add them to --train-subsets or drop them from --shots")

    def wants(self, method: str) -> bool:
        return method in self.methods

    @property
    def student_methods(self) -> tuple[str, ...]:
        return tuple(m for m in STUDENT_METHODS if m in self.methods)

    @property
    def shot_limits(self) -> dict[str, int]:
        """``shots`` as {subset: N}; a malformed entry is a one-line error."""
        limits: dict[str, int] = {}
        for item in self.shots:
            subset, _, n = str(item).partition("=")
            check(bool(subset.strip()) and n.strip().isdigit() and int(n) >= 1,
                  f"shots: {item!r}; expected SUBSET=N with N a positive integer, e.g. sdedit=64")
            check(subset.strip() not in limits, f"shots: {subset.strip()!r} given twice")
            limits[subset.strip()] = int(n)
        return limits

    def training_rows(self) -> dict[str, Any]:
        """``ParquetSource`` keyword arguments of the rows to train on: the training subsets and
        splits, less the calibration holdout under ``train_holdout``, few-shot subsets limited."""
        rows: dict[str, Any] = {"subsets": self.train_subsets, "splits": self.train_splits}
        if self._resolved_calibration() == "train_holdout":
            rows |= {"holdout": "exclude", "holdout_fraction": self.calibration_holdout}
        if self.shots:
            rows["shots"] = self.shot_limits
        return rows

    def calibration_rows(self) -> dict[str, Any]:
        """``ParquetSource`` keyword arguments of the rows to calibrate on: the val split of the
        training subsets (every subset when training on all) and of ``calibration_subsets``, or the
        held-out part of the training rows (disjoint from ``training_rows``)."""
        if self._resolved_calibration() == "val":
            subsets = tuple(dict.fromkeys(self.train_subsets + self.calibration_subsets)) if self.train_subsets else ()
            return {"subsets": subsets, "splits": (VAL,)}
        return {"subsets": self.train_subsets, "splits": self.train_splits, "holdout": "only",
                "holdout_fraction": self.calibration_holdout}

    def _resolved_calibration(self) -> str:
        if self.calibration_split == "auto":
            raise ConfigError("calibration_split: still auto; resolve it first (resolve_calibration_split), "
                              "which needs the splits scored and whether the store has val rows")
        return self.calibration_split


VAL = "val"


def resolve_calibration_split(cfg: TrainConfig, *, eval_splits: Sequence[str], val_rows: int) -> TrainConfig:
    """``cfg`` with ``calibration_split`` resolved to ``val`` or ``train_holdout`` (``auto``: val
    unless ``eval_splits`` has val or the store has no val rows, ``val_rows == 0``). A choice that
    would fit calibration on rows that are scored, or on rows that do not exist, is refused."""
    scored = set(eval_splits)
    choice = cfg.calibration_split
    if choice == "auto":
        choice = VAL if VAL not in scored and val_rows > 0 else "train_holdout"
    if choice == VAL:
        check(VAL not in scored, "calibration_split=val, and val is among the scored splits (--eval-splits): "
                                 "thresholds and Platt scaling would be fitted on the rows they are scored on; "
                                 "use calibration_split=train_holdout (or auto)")
        check(val_rows > 0, "calibration_split=val, but the store has no val rows; use calibration_split="
                            "train_holdout (or auto), which holds out part of the training rows")
    else:
        check(not cfg.calibration_subsets, f"calibration_subsets {list(cfg.calibration_subsets)} name val rows to "
                                           "calibrate on, but calibration_split is train_holdout (val is scored or "
                                           "absent); drop them, or score other splits")
        overlap = sorted(scored & set(cfg.train_splits))
        check(not overlap, f"calibration_split=train_holdout calibrates on held-out rows of {overlap}, which are "
                           f"also scored (--eval-splits); score other splits")
    return _replace(cfg, calibration_split=choice)


PRESETS: dict[str, dict[str, Any]] = {
    "genimage": dict(teacher_lr=1e-5, student_lr=1e-5, augmenter_lr=1e-5, classifier_lr=1e-3),
    "ufd": dict(teacher_lr=1e-5, student_lr=1e-4, augmenter_lr=1e-4, classifier_lr=1e-5),
    # Tiny and fast, with rates that learn something in a few hundred steps (tests, demo).
    "debug": dict(rotations=2, teacher_lr=1e-3, student_lr=1e-3, augmenter_lr=1e-3,
                  classifier_lr=1e-3, probe_lr=1e-2, batch_size=64, feature_dtype="float32"),
    # The offline demo: a few thousand rows of one zoo family, where the paper's 1e-5 rates and
    # one epoch per stage would take a handful of steps. More epochs per stage and the debug rates
    # give every network a few hundred steps; the schedule and losses are the paper's.
    "demo": dict(teacher_epochs=10, stage_epochs=2, classifier_epochs=10, teacher_lr=1e-3, student_lr=1e-3,
                 augmenter_lr=1e-3, classifier_lr=1e-3, probe_lr=1e-2, batch_size=64, feature_dtype="float32"),
}


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A full config for a named preset (``genimage``, ``ufd``, ``debug``) with overrides."""
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown {name!r}; choose from {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"TrainConfig: unknown field(s) {unknown}; known: {sorted(known)}")
    return TrainConfig(**{**PRESETS[name], **overrides})


def replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    return _replace(cfg, **changes)
