"""``ExtractConfig``: every knob of one extraction run, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gendet.config import check
from gendet.extract.tokens import parse_grid

PRECISIONS = ("fp32", "fp16", "bf16")
FEATURE_DTYPES = ("float16", "float32")
MODES = ("incremental", "overwrite")


@dataclass(frozen=True, kw_only=True, slots=True)
class ExtractConfig:
    shards: str
    """Input shards: a directory of ``.tar`` files, one ``.tar`` URL, a brace pattern or a glob."""
    features: str
    """Feature store URL; output goes to ``FEATURES/<variant>/`` (see ``gendet.features.store``)."""
    encoder: str = "spectrum:v1"
    """Encoder name (``gendet.encoders.registry``): ``spectrum:v1`` offline, ``open_clip:<arch>/<tag>``."""
    weights: str | None = None
    """Local file or fsspec URL of the encoder weights, for clusters without internet."""
    degrade: str = ""
    """Robustness degradation applied before preprocessing (``jpeg:65``, ``blur:3`` …); empty: none."""
    device: str = "cpu"
    """Device of the plain runner's encoder (the Ray pipeline uses cuda when ``num_gpus`` > 0)."""
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    """Encoder compute precision (fp16/bf16 autocast on GPU)."""
    feature_dtype: Literal["float16", "float32"] = "float16"
    """Stored feature dtype."""
    batch_size: int = 64
    """Images per encoder call."""
    num_gpus: float = 0.0
    """GPUs per encoder actor (Ray pipeline)."""
    concurrency: int = 1
    """Number of encoder actors (Ray pipeline)."""
    read_tasks: int | None = None
    """Most reader (decode) tasks at once on Ray; None: physical cores - 1 on a Ray this job starts
    itself, Ray Data's choice on a cluster."""
    cpus_per_actor: float = 1.0
    """Torch threads of a CPU encoder (at least 1), and the CPUs each GPU encoder actor reserves on
    Ray. CPU-only encoder actors reserve none, so decode tasks can never wait behind them (see
    ``pipelines/extract.py``)."""
    num_workers: int = 2
    """Decode worker processes of the plain runner (torch DataLoader); 0 decodes in-process."""
    mode: Literal["incremental", "overwrite"] = "incremental"
    """``incremental`` skips shards whose stats file exists; ``overwrite`` redoes every shard."""
    max_retries: int = 2
    """Extra attempts at reading or writing a failing shard before it is reported as failed."""
    tokens: bool = False
    """Also store each image's token grid, its mask's per-token share and its manipulation fields
    (a token variant, ``<variant>__tok<R>x<C>``: CONTRACTS.md); the encoder must have a token grid."""
    token_grid: str = ""
    """With ``tokens``: the grid to store, ROWSxCOLS (e.g. 8x8), tokens averaged over the cells of
    the encoder's own grid; empty: the encoder's native grid."""

    def __post_init__(self) -> None:
        check(bool(str(self.shards).strip()), "shards: give a directory, .tar URL or pattern of shards")
        check(bool(str(self.features).strip()), "features: give the feature store URL to write to")
        check(bool(self.encoder.strip()), "encoder: give an encoder name such as spectrum:v1")
        check(self.precision in PRECISIONS, f"precision {self.precision!r}: use one of {PRECISIONS}")
        check(self.feature_dtype in FEATURE_DTYPES, f"feature_dtype {self.feature_dtype!r}: use one of {FEATURE_DTYPES}")
        check(self.mode in MODES, f"mode {self.mode!r}: use one of {MODES}")
        check(self.batch_size >= 1, f"batch_size {self.batch_size}: must be >= 1")
        check(self.num_gpus >= 0, f"num_gpus {self.num_gpus}: must be >= 0")
        check(self.concurrency >= 1, f"concurrency {self.concurrency}: must be >= 1")
        check(self.read_tasks is None or self.read_tasks >= 1, f"read_tasks {self.read_tasks}: must be >= 1")
        check(self.cpus_per_actor > 0, f"cpus_per_actor {self.cpus_per_actor}: must be > 0")
        check(self.num_workers >= 0, f"num_workers {self.num_workers}: must be >= 0")
        check(self.max_retries >= 0, f"max_retries {self.max_retries}: must be >= 0")
        if str(self.token_grid).strip():
            check(self.tokens, f"--token-grid {self.token_grid}: it shapes token variants; add --tokens")
            parse_grid(self.token_grid)  # the encoder's limits are checked by prepare (gendet.extract.tokens)
