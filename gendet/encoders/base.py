"""The encoder interface every image encoder implements, and its preprocessing half.

An encoder is a plain class built from keyword arguments (so a Ray Data actor builds it inside the
worker and no model is pickled). Attributes: ``name``, ``dim``, ``preprocessor`` (a
``Preprocessor``: ``pixels``/``finish`` split at uint8 for decode workers), ``preprocess`` (PIL RGB
-> float Tensor[3,H,W]), ``__call__`` (Tensor[B,3,H,W] -> float32 Tensor[B,dim], no grad),
``preprocess_cfg`` (dict read back from the model/transform), ``preprocess_hash`` (sha256 of its
canonical JSON), ``weights_ref``, ``device``, ``precision``, ``to(device)``.
Names and loading: ``gendet.encoders.registry``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from gendet import GendetError

PRECISIONS = ("fp32", "fp16", "bf16")
_NAME = re.compile(r"^(?P<family>[a-z_]+):(?P<arch>[^/]+)(?:/(?P<pretrained>.+))?$")


@dataclass(frozen=True, slots=True)
class EncoderSpec:
    """A parsed encoder name: ``family:arch[/pretrained]``."""

    family: str
    arch: str
    pretrained: str = ""

    @property
    def name(self) -> str:
        return f"{self.family}:{self.arch}" + (f"/{self.pretrained}" if self.pretrained else "")

    @classmethod
    def parse(cls, name: str) -> EncoderSpec | None:
        """The parts of ``name`` by syntax alone (None when it is not ``family:arch[/pretrained]``)."""
        m = _NAME.match(str(name).strip())
        return cls(m["family"], m["arch"], m["pretrained"] or "") if m else None


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, tuples as lists: the text that ``preprocess_hash`` hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list)


def preprocess_hash(cfg: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(cfg).encode("utf-8")).hexdigest()


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


class Preprocessor:
    """An encoder's preprocessing without its model: picklable, cheap, for decode workers.

    Two halves, so decode workers ship uint8 pixels (4x fewer bytes than float32 through Ray's
    object store, a DataLoader pipe or PCIe) and the encoder side finishes them on its device:
    ``pixels(image)`` -> uint8 ndarray [3,H,W] (the geometry: resize, crop, in PIL) and
    ``finish(uint8 Tensor[B,3,H,W])`` -> float32 (``/255`` then ``(x - mean) / std``, the exact
    ops of torchvision's ToTensor + Normalize). ``__call__`` is ``finish(pixels(image))``: the
    two paths give bit-identical tensors (tested), so features do not depend on which one ran.
    """

    def __init__(self, cfg: dict[str, Any], geometry: Callable[[Image.Image], Image.Image]):
        self.preprocess_cfg = json.loads(canonical_json(cfg))  # JSON-clean copy: lists, not tuples
        self.preprocess_hash = preprocess_hash(self.preprocess_cfg)
        self._geometry = geometry
        self._mean = torch.tensor(self.preprocess_cfg["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(self.preprocess_cfg["std"], dtype=torch.float32).view(1, -1, 1, 1)

    def pixels(self, image: Image.Image) -> np.ndarray:
        array = np.asarray(self._geometry(_rgb(image)), dtype=np.uint8)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def finish(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(torch.float32).div_(255)
        if self._mean.device != x.device:  # once per device, not a host-to-device copy per batch
            self._mean, self._std = self._mean.to(x.device), self._std.to(x.device)
        return x.sub_(self._mean).div_(self._std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.finish(torch.from_numpy(self.pixels(image))[None])[0]


class Encoder:
    """The interface every encoder implements (see the module docstring)."""

    name: str
    dim: int
    weights_ref: str
    device: str
    precision: str
    preprocessor: Preprocessor

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        return self.preprocessor.preprocess_cfg

    @property
    def preprocess_hash(self) -> str:
        return self.preprocessor.preprocess_hash

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.preprocessor(image)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    token_grid: tuple[int, int] = (0, 0)
    """(rows, cols) of ``tokens``' grid; (0, 0) for an encoder without one (``gendet.encoders.tokens``)."""
    token_dim: int = 0

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch features of a preprocessed batch: float32 [B, rows*cols, token_dim], row-major."""
        raise GendetError(f"encoder {self.name}: no token grid; use spectrum:v1/v2 or an open_clip ViT")

    def features_and_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(self(images), self.tokens(images))``; encoders override it to share one forward."""
        return self(images), self.tokens(images)

    def token_mask(self, mask: np.ndarray) -> np.ndarray:
        """An image's pixel mask [H, W] (1 = manipulated) -> float32 [rows*cols]: the manipulated
        share of each token's pixels, through this encoder's preprocessing geometry."""
        from gendet.encoders.tokens import geometry_mask, grid_fractions

        if self.token_grid == (0, 0):
            raise GendetError(f"encoder {self.name}: no token grid; use spectrum:v1/v2 or an open_clip ViT")
        return grid_fractions(geometry_mask(self.preprocessor, mask), self.token_grid)[0].numpy()

    def to(self, device: str) -> Encoder:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """What to record next to features: enough to rebuild this encoder."""
        return {"encoder": self.name, "dim": self.dim, "weights_ref": self.weights_ref,
                "preprocess_cfg": self.preprocess_cfg, "preprocess_hash": self.preprocess_hash,
                "precision": self.precision}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim}, device={self.device!r}, precision={self.precision!r})"


def check_device(device: str, precision: str) -> torch.device:
    """A torch.device for ``device``, refusing combinations that would fail later, mid-job."""
    if precision not in PRECISIONS:
        raise GendetError(f"precision {precision!r}: choose one of {PRECISIONS}")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise GendetError(f"device {device!r}: not a torch device ({exc}); use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GendetError(f"device {device!r}: no CUDA device visible here; pass --device cpu")
    if precision == "fp16" and dev.type == "cpu":
        raise GendetError("precision fp16 needs a GPU; on CPU use fp32 or bf16")
    return dev


def autocast(dev: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[precision])
