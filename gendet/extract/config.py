"""``ExtractConfig``: every knob of one extraction run, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gendet.config import check, parse_resources
from gendet.extract.tokens import parse_grid

PRECISIONS = ("fp32", "fp16", "bf16")
FEATURE_DTYPES = ("float16", "float32")
MODES = ("incremental", "overwrite", "verify")


@dataclass(frozen=True, kw_only=True, slots=True)
class ExtractConfig:
    shards: str
    """Input shards (any fsspec URL): a directory of ``.tar`` files, one ``.tar``, a brace pattern or a glob."""
    features: str
    """Feature store URL (fsspec); output goes to ``FEATURES/<variant>/`` (``gendet.features.store``)."""
    encoder: str = "spectrum:v2"
    """Encoder name: ``spectrum:v2`` (offline, weight-free, native pixels; the demo's) or
    ``open_clip:<arch>/<tag>`` (e.g. ``open_clip:ViT-L-14/openai``; ``/none`` = random init)."""
    weights: str | None = None
    """Local file or fsspec URL of the encoder weights, for clusters without internet."""
    degrade: str = ""
    """Robustness degradation before preprocessing: ``jpeg:Q`` (1-100), ``blur:SIGMA``, ``resize:SIDE``
    (GenImage's Table 4: jpeg:65, jpeg:30, blur:3, blur:5, resize:112, resize:64), or ``aug:P`` (a
    training augmentation drawn per image with probability P); empty: none."""
    device: str = "cpu"
    """Encoder device of the plain runner (``--local``: cpu, cuda, cuda:N); on Ray, cuda when ``num_gpus`` > 0."""
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
    actor_resources: str = ""
    """Custom Ray resources each encoder actor needs, as JSON ('{"gpu_node": 1}'): the actors run only on
    nodes that have them (a node type of `ray up`, a KubeRay group's rayStartParams resources)."""
    read_tasks: int | None = None
    """Most reader (decode) tasks at once on Ray; None: physical cores - 1 on a Ray this job starts
    itself, Ray Data's choice on a cluster."""
    cpus_per_actor: float = 1.0
    """Torch threads of a CPU encoder (at least 1), and the CPUs each GPU encoder actor reserves on
    Ray. CPU-only encoder actors reserve a hundredth of one, so decode tasks never wait behind them
    and a 0-CPU head node gets none (see ``pipelines/extract.py``)."""
    decode_workers: int = 2
    """Decode processes of the plain runner (``--local``, a torch DataLoader); 0 decodes in-process."""
    mode: Literal["incremental", "overwrite", "verify"] = "incremental"
    """``incremental`` skips shards already done unless their input changed (size, ETag/mtime) or their
    outputs are damaged; ``verify`` also reads every done input again and redoes those whose content
    (sha256) changed; ``overwrite`` redoes every shard."""
    max_retries: int = 2
    """Extra attempts at reading or writing a failing shard before it is reported as failed."""
    tokens: bool = False
    """Also store each image's token grid, its mask.png's per-token share and its manipulation fields (a
    token variant ``FEATURES/<variant>__tok<R>x<C>/`` beside the pooled one: CONTRACTS.md); spectrum:v1/v2
    or an open_clip ViT."""
    token_grid: str = ""
    """With ``tokens``: the grid to store, ROWSxCOLS (e.g. 8x8), tokens averaged over the cells of
    the encoder's own grid; empty: the encoder's native grid."""

    def __post_init__(self) -> None:
        check(bool(str(self.shards).strip()), "shards: give a directory, .tar URL or pattern of shards")
        check(bool(str(self.features).strip()), "features: give the feature store URL to write to")
        check(bool(self.encoder.strip()), "encoder: give an encoder name such as spectrum:v2")
        check(self.precision in PRECISIONS, f"precision {self.precision!r}: use one of {PRECISIONS}")
        check(self.feature_dtype in FEATURE_DTYPES, f"feature_dtype {self.feature_dtype!r}: use one of {FEATURE_DTYPES}")
        check(self.mode in MODES, f"mode {self.mode!r}: use one of {MODES}")
        check(self.batch_size >= 1, f"batch_size {self.batch_size}: must be >= 1")
        check(self.num_gpus >= 0, f"num_gpus {self.num_gpus}: must be >= 0")
        check(self.concurrency >= 1, f"concurrency {self.concurrency}: must be >= 1")
        check(self.read_tasks is None or self.read_tasks >= 1, f"read_tasks {self.read_tasks}: must be >= 1")
        check(self.cpus_per_actor > 0, f"cpus_per_actor {self.cpus_per_actor}: must be > 0")
        check(self.decode_workers >= 0, f"decode_workers {self.decode_workers}: must be >= 0")
        check(self.max_retries >= 0, f"max_retries {self.max_retries}: must be >= 0")
        parse_resources(self.actor_resources, "actor_resources")
        if str(self.token_grid).strip():
            check(self.tokens, f"--token-grid {self.token_grid}: it shapes token variants; add --tokens")
            parse_grid(self.token_grid)  # the encoder's limits are checked by prepare (gendet.extract.tokens)
