"""open_clip image towers as gendet encoders: names, preprocessing read back from open_clip, weights.

``open_clip:<arch>/<pretrained>``: ``<pretrained>`` is an open_clip tag (weights fetched by open_clip
from its hub) or ``none`` (random init). ``weights=`` a local file or any fsspec URL loads that
checkpoint instead (copied once to a local cache), with the tag's preprocessing and activation.
Architectures shipped as data (``model_configs/open_clip/*.json``) are registered on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import fsspec
import torch
from fsspec.implementations.cache_mapper import AbstractCacheMapper

from gendet import GendetError, first_line
from gendet import io as gio
from gendet.encoders.base import Encoder, EncoderSpec, Preprocessor, autocast, canonical_json, check_device

OPEN_CLIP_CONFIG_DIR = Path(__file__).parent / "model_configs" / "open_clip"


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


def _preprocessor(cfg: dict[str, Any]) -> Preprocessor:
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


class _HashPlusName(AbstractCacheMapper):
    """Cache file name ``<hash of the URL>-<its basename>``: open_clip reads a checkpoint's format
    from its extension (``.safetensors`` or not), which fsspec's default hash-only names drop."""

    def __call__(self, path: str) -> str:
        return f"{hashlib.sha256(path.encode()).hexdigest()[:16]}-{gio.basename(path)}"


def local_weights(url: str) -> str:
    """A local path for a weights file or fsspec URL; remote files are copied once into
    ``$GENDET_CACHE`` (default ``~/.cache/gendet``)``/weights`` (fsspec's ``filecache``)."""
    fs, path = gio.fs_and_path(url)
    if not fs.exists(path) or fs.isdir(path):
        raise GendetError(f"{url}: weights file not found; pass --weights a checkpoint file (local path or fsspec URL)")
    if gio.is_local(fs):
        return str(Path(path).resolve())
    cache = Path(os.environ.get("GENDET_CACHE", Path.home() / ".cache" / "gendet")) / "weights"
    # fsspec's filecache: copied once (to a temporary name, then moved into place), then reused
    return fsspec.open_local(f"filecache::{url}", filecache={"cache_storage": str(cache),
                                                             "cache_mapper": _HashPlusName()})


def _weights_ref(spec: EncoderSpec, weights: str | None, loaded: str | None) -> str:
    """Where the weights came from, in a form ``weights=`` accepts again elsewhere: a remote URL as
    given, a local file as an absolute path; ``open_clip-hub:<arch>/<tag>`` or ``none`` otherwise."""
    if weights:
        return str(loaded) if gio.is_local(gio.fs_and_path(weights)[0]) else str(weights)
    return "none" if spec.pretrained == "none" else f"open_clip-hub:{spec.arch}/{spec.pretrained}"


class OpenClipEncoder(Encoder):
    """The image tower of an open_clip model; output L2-normalised float32 embeddings."""

    def __init__(self, name: str, *, weights: str | None = None, device: str = "cpu", precision: str = "fp32"):
        import open_clip

        spec = EncoderSpec.parse(name)
        if spec is None or spec.family != "open_clip":
            raise GendetError(f"encoder {name!r}: not an open_clip:<arch>/<tag> name")
        check_open_clip_name(spec)
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
                raise GendetError(f"{weights}: not a usable {spec.arch} checkpoint ({first_line(exc)}); "
                                  f"pass weights saved from open_clip for this architecture") from exc
            raise GendetError(f"{spec.name}: could not get the weights from open_clip's hub ({first_line(exc)}); "
                              f"without internet pass --weights PATH_OR_URL to a copy of the checkpoint") from exc
        cfg = _with_crop(open_clip.get_model_preprocess_cfg(model))
        if cfg != open_clip_preprocess_cfg(spec.arch, spec.pretrained):
            raise GendetError(f"{spec.name}: open_clip {open_clip.__version__} preprocesses differently from "
                              f"what gendet predicts ({cfg}); pin open_clip_torch to a tested version")
        self.visual = model.visual.eval().requires_grad_(False)  # the text tower is never used
        del model
        if isinstance(self.visual, open_clip.transformer.VisionTransformer):  # a ViT: patch tokens too
            self.visual.output_tokens = True  # forward -> (pooled, tokens after ln_post; no extra work)
            self.token_grid, self.token_dim = tuple(self.visual.grid_size), int(self.visual.transformer.width)
        self.name, self.precision, self.preprocessor = spec.name, precision, _preprocessor(cfg)
        self.weights_ref = _weights_ref(spec, weights, pretrained)
        self.dim = int(open_clip.get_model_config(spec.arch)["embed_dim"])  # the image tower projects to it
        self.to(str(dev))

    def to(self, device: str) -> OpenClipEncoder:
        self._dev = check_device(device, self.precision)
        self.visual.to(self._dev)
        self.device = str(self._dev)
        return self

    @torch.inference_mode()
    def features_and_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward: (the L2-normalised embedding, the patch tokens [B, rows*cols, width] float32)."""
        if self.token_grid == (0, 0):
            return self(images), self.tokens(images)
        with autocast(self._dev, self.precision):
            pooled, tokens = self.visual(images.to(self._dev, non_blocking=True))
        return torch.nn.functional.normalize(pooled.float(), dim=-1), tokens.float()

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        if self.token_grid == (0, 0):
            return super().tokens(images)
        return self.features_and_tokens(images)[1]

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self._dev, self.precision):
            features = self.visual(images.to(self._dev, non_blocking=True))
        if isinstance(features, tuple):  # a ViT's (pooled, tokens)
            features = features[0]
        return torch.nn.functional.normalize(features.float(), dim=-1)


def check_open_clip_name(spec: EncoderSpec, hint: str = "") -> None:
    """GendetError unless open_clip knows ``spec.arch`` and its tag (``none`` = random init)."""
    import open_clip

    _register_open_clip_configs()
    if spec.arch not in open_clip.list_models():
        raise GendetError(f"encoder {spec.name!r}: open_clip has no architecture {spec.arch!r}" + (f"; {hint}" if hint else ""))
    tags = open_clip.list_pretrained_tags_by_model(spec.arch)
    if spec.pretrained != "none" and spec.pretrained not in tags:
        raise GendetError(f"encoder {spec.name!r}: unknown pretrained tag {spec.pretrained!r} for {spec.arch}; "
                          f"choose one of {tags + ['none']}")


def open_clip_names() -> list[str]:
    """Each open_clip (arch, tag), plus ``<arch>/none`` (random init) for every architecture."""
    import open_clip

    _register_open_clip_configs()
    return ([f"open_clip:{arch}/{tag}" for arch, tag in open_clip.list_pretrained()]
            + [f"open_clip:{arch}/none" for arch in open_clip.list_models()])


def open_clip_preprocessor(spec: EncoderSpec) -> Preprocessor:
    """The preprocessing of ``spec`` alone, without building the model (decode workers)."""
    return _preprocessor(open_clip_preprocess_cfg(spec.arch, spec.pretrained))
