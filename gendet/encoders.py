"""Image encoders: one registry, one interface, from decoded image to a fixed-width feature vector.

Names (``load_encoder(name)``, ``gendet extract --encoder NAME``):

``open_clip:<arch>/<pretrained>`` -- the image tower of any open_clip model (``open_clip.list_pretrained()``),
    with open_clip's own inference preprocessing (resize the shorter side, center crop, normalise),
    read back from the model. ``<pretrained>`` is an open_clip tag (weights fetched by open_clip from
    its hub, as open_clip does it) or ``none`` (random init: tests and benchmarks). ``weights=`` a
    local file or any fsspec URL loads that checkpoint instead (copied once to a local cache), with the
    tag's preprocessing and activation: clusters without internet keep a copy on shared storage.
    Output: the image embedding, L2-normalised, float32 (as UniversalFakeDetect and clip-retrieval do;
    linear probes and GenDet's heads see unit vectors). **Production default:**
    ``open_clip:ViT-L-14/openai`` (the CLIP ViT-L/14 of Ojha et al. and of the GenDet paper), 768-d.
    ``open_clip:GenDet-Debug-ViT/none`` is a tiny random ViT shipped here for fast tests (64-d).

``spectrum:v1`` -- weight-free forensic features (``gendet.spectrum``): multi-scale power spectra of
    a high-pass residual, where generator upsampling leaves periodic peaks, plus residual statistics;
    392-d (two 196-wide tokens), pure torch, deterministic. **Offline default:** everything runs
    without downloads and still means something.

Every encoder is a plain class constructed from keyword arguments (``load_encoder``'s), so a Ray
Data actor builds it inside the worker and no model is pickled. Attributes: ``name``, ``dim``,
``preprocess`` (PIL RGB -> float Tensor[3,H,W]; ``preprocessor.pixels``/``finish`` split it at uint8
for decode workers), ``__call__`` (Tensor[B,3,H,W] -> float32 Tensor[B,dim], no grad),
``preprocess_cfg`` (dict read back from the model/transform), ``preprocess_hash`` (sha256 of its
canonical JSON), ``weights_ref``, ``device``, ``precision``, ``to(device)``.
``load_preprocess(name)`` gives the preprocessing alone, without loading weights, for decode workers
that never run the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from gendet import GendetError
from gendet import io as gio

PRECISIONS = ("fp32", "fp16", "bf16")
OFFLINE_DEFAULT = "spectrum:v1"
PRODUCTION_DEFAULT = "open_clip:ViT-L-14/openai"
SPECTRUM_VERSIONS = ("v1",)
# open_clip architectures shipped as data (registered with open_clip on first use).
OPEN_CLIP_CONFIG_DIR = Path(__file__).parent / "encoder_configs" / "open_clip"
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


def _known_hint() -> str:
    return (f"known: {OFFLINE_DEFAULT}, open_clip:<arch>/<tag|none> for any open_clip model "
            f"(e.g. {PRODUCTION_DEFAULT}, open_clip:ViT-B-32/none, open_clip:GenDet-Debug-ViT/none)")


def parse_encoder_name(name: str) -> EncoderSpec:
    """Check an encoder name (no weights touched); unknown names raise GendetError listing the known ones."""
    m = _NAME.match(str(name).strip())
    if not m:
        raise GendetError(f"encoder {name!r}: not of the form family:arch[/pretrained]; {_known_hint()}")
    family, arch, pretrained = m["family"], m["arch"], m["pretrained"] or ""
    if family == "spectrum" and arch in SPECTRUM_VERSIONS and not pretrained:
        return EncoderSpec(family, arch)
    if family == "open_clip":
        import open_clip

        _register_open_clip_configs()
        if arch not in open_clip.list_models():
            raise GendetError(f"encoder {name!r}: open_clip has no architecture {arch!r}; {_known_hint()}")
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained != "none" and pretrained not in tags:
            raise GendetError(f"encoder {name!r}: unknown pretrained tag {pretrained!r} for {arch}; "
                              f"choose one of {tags + ['none']}")
        return EncoderSpec(family, arch, pretrained)
    raise GendetError(f"encoder {name!r}: unknown encoder; {_known_hint()}")


def list_encoders() -> list[str]:
    """Every name ``load_encoder`` accepts: the spectrum versions and each open_clip (arch, tag),
    plus ``<arch>/none`` (random init) for every open_clip architecture."""
    import open_clip

    _register_open_clip_configs()
    names = [f"spectrum:{v}" for v in SPECTRUM_VERSIONS]
    names += [f"open_clip:{arch}/{tag}" for arch, tag in open_clip.list_pretrained()]
    names += [f"open_clip:{arch}/none" for arch in open_clip.list_models()]
    return names


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

    def to(self, device: str) -> "Encoder":
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


# ---------------------------------------------------------------------------------------------- open_clip

_REGISTERED = False


def _register_open_clip_configs() -> None:
    global _REGISTERED
    if not _REGISTERED:
        import open_clip

        open_clip.add_model_config(OPEN_CLIP_CONFIG_DIR)
        _REGISTERED = True


def _tag_cfg(arch: str, tag: str) -> dict[str, Any]:
    from open_clip.pretrained import get_pretrained_cfg

    return get_pretrained_cfg(arch, tag) if tag != "none" else {}


def open_clip_preprocess_cfg(arch: str, tag: str) -> dict[str, Any]:
    """open_clip's inference preprocessing for (arch, tag), worked out from its configs the way
    ``open_clip.create_model`` does, without building the model; the encoder checks it against the
    config the model carries."""
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    _register_open_clip_configs()
    cfg = merge_preprocess_dict(PreprocessCfg(), _tag_cfg(arch, tag))
    size = open_clip.get_model_config(arch)["vision_cfg"].get("image_size", cfg["size"])
    cfg["size"] = [size, size] if isinstance(size, int) else list(size)
    return _with_crop(cfg)


def _with_crop(cfg: dict[str, Any]) -> dict[str, Any]:
    crop = {"shortest": "center", "squash": "none", "longest": "pad"}.get(cfg.get("resize_mode"), "unknown")
    return json.loads(canonical_json({**cfg, "crop": crop}))


def _open_clip_preprocessor(cfg: dict[str, Any]) -> Preprocessor:
    """open_clip's own inference transform, split where its PIL geometry ends: the rest must be
    exactly (mode conversion,) ToTensor, Normalize(cfg's mean/std), which ``Preprocessor.finish`` does."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from torchvision import transforms as T

    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k != "crop"}
    steps = list(image_transform_v2(PreprocessCfg(**fields), is_train=False).transforms)
    to_tensor = next((i for i, t in enumerate(steps) if isinstance(t, T.ToTensor)), None)
    tail = steps[to_tensor + 1 :] if to_tensor is not None else []
    if (len(tail) != 1 or not isinstance(tail[0], T.Normalize)
            or [list(tail[0].mean), list(tail[0].std)] != [list(cfg["mean"]), list(cfg["std"])]):
        raise GendetError(f"open_clip {open_clip.__version__}: its image transform is not geometry + ToTensor + "
                          f"Normalize ({steps}); pin open_clip_torch to a tested version")
    return Preprocessor(cfg, T.Compose(steps[:to_tensor]))


def local_weights(url: str) -> str:
    """A local path for a weights file or fsspec URL; remote files are copied once into
    ``$GENDET_CACHE`` (default ``~/.cache/gendet``)``/weights``, atomically."""
    fs, path = gio.fs_and_path(url)
    if not fs.exists(path) or fs.isdir(path):
        raise GendetError(f"{url}: weights file not found; pass --weights a checkpoint file (local path or fsspec URL)")
    if gio.is_local(fs):
        return str(Path(path).resolve())
    cache = Path(os.environ.get("GENDET_CACHE", Path.home() / ".cache" / "gendet")) / "weights"
    target = cache / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{gio.basename(url)}"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        fs.get_file(path, str(tmp))
        os.replace(tmp, target)
    return str(target)


def _weights_ref(spec: EncoderSpec, weights: str | None, loaded: str | None) -> str:
    """Where the weights came from, in a form ``weights=`` accepts again elsewhere: a remote URL as
    given, a local file as an absolute path; ``open_clip-hub:<arch>/<tag>`` or ``none`` otherwise."""
    if weights:
        return str(loaded) if gio.is_local(gio.fs_and_path(weights)[0]) else str(weights)
    return "none" if spec.pretrained == "none" else f"open_clip-hub:{spec.arch}/{spec.pretrained}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


class OpenClipEncoder(Encoder):
    """The image tower of an open_clip model; output L2-normalised float32 embeddings."""

    def __init__(self, name: str, *, weights: str | None = None, device: str = "cpu", precision: str = "fp32"):
        import open_clip

        spec = parse_encoder_name(name)
        dev = check_device(device, precision)
        tag_cfg = _tag_cfg(spec.arch, spec.pretrained)
        pretrained = local_weights(weights) if weights else (None if spec.pretrained == "none" else spec.pretrained)
        try:
            # With a weights file, open_clip cannot know the tag: pass the tag's preprocessing and
            # activation explicitly so features match the hub download exactly.
            model, _, _ = open_clip.create_model_and_transforms(
                spec.arch, pretrained=pretrained, pretrained_text=False,  # the text tower is dropped: never fetch it
                force_quick_gelu=bool(tag_cfg.get("quick_gelu")),
                image_mean=tag_cfg.get("mean"), image_std=tag_cfg.get("std"),
                image_interpolation=tag_cfg.get("interpolation"), image_resize_mode=tag_cfg.get("resize_mode"))
        except Exception as exc:  # open_clip raises RuntimeError/OSError/ValueError/KeyError alike
            if weights:
                raise GendetError(f"{weights}: not a usable {spec.arch} checkpoint ({_first_line(exc)}); "
                                  f"pass weights saved from open_clip for this architecture") from exc
            raise GendetError(f"{spec.name}: could not get the weights from open_clip's hub ({_first_line(exc)}); "
                              f"without internet pass --weights PATH_OR_URL to a copy of the checkpoint") from exc
        cfg = _with_crop(open_clip.get_model_preprocess_cfg(model))
        if cfg != open_clip_preprocess_cfg(spec.arch, spec.pretrained):
            raise GendetError(f"{spec.name}: open_clip {open_clip.__version__} preprocesses differently from "
                              f"what gendet predicts ({cfg}); pin open_clip_torch to a tested version")
        self.visual = model.visual.eval().requires_grad_(False)  # the text tower is never used
        del model
        self.name, self.precision, self.preprocessor = spec.name, precision, _open_clip_preprocessor(cfg)
        self.weights_ref = _weights_ref(spec, weights, pretrained)
        self.dim = int(open_clip.get_model_config(spec.arch)["embed_dim"])  # the image tower projects to it
        self.to(str(dev))

    def to(self, device: str) -> "OpenClipEncoder":
        self._dev = check_device(device, self.precision)
        self.visual.to(self._dev)
        self.device = str(self._dev)
        return self

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self._dev, self.precision):
            features = self.visual(images.to(self._dev, non_blocking=True))
        return torch.nn.functional.normalize(features.float(), dim=-1)


# ---------------------------------------------------------------------------------------------- loaders

def load_encoder(name: str, *, weights: str | None = None, device: str = "cpu", precision: str = "fp32") -> Encoder:
    """The encoder called ``name``, loaded on ``device``; see the module docstring for names."""
    spec = parse_encoder_name(name)
    if spec.family == "spectrum":
        from gendet.spectrum import SpectrumEncoder

        if weights:
            raise GendetError(f"{spec.name} has no weights; drop --weights {weights}")
        return SpectrumEncoder(spec.name, device=device, precision=precision)
    return OpenClipEncoder(spec.name, weights=weights, device=device, precision=precision)


def load_preprocess(name: str) -> Preprocessor:
    """The preprocessing of encoder ``name`` alone (no weights loaded): same cfg and hash as the
    loaded encoder's."""
    spec = parse_encoder_name(name)
    if spec.family == "spectrum":
        from gendet.spectrum import spectrum_preprocessor

        return spectrum_preprocessor()
    return _open_clip_preprocessor(open_clip_preprocess_cfg(spec.arch, spec.pretrained))
