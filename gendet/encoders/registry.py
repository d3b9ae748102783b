"""Encoder names: one registry, one interface, from decoded image to a fixed-width feature vector.

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

``spectrum:v1`` -- weight-free forensic features (``gendet.encoders.spectrum``): multi-scale power spectra of
    a high-pass residual, where generator upsampling leaves periodic peaks, plus residual statistics;
    392-d (two 196-wide tokens), pure torch, deterministic. **Offline default:** everything runs
    without downloads and still means something.

``spectrum:v2`` -- the same measurements on native pixels only: no image of 64 px or more is ever
    resampled, so features do not depend on whether an image was upsampled; 344-d.

Every encoder implements ``gendet.encoders.base.Encoder`` and is built from keyword arguments
(``load_encoder``'s), so a Ray Data actor builds it inside the worker and no model is pickled.
``load_preprocess(name)`` gives the preprocessing alone, without loading weights, for decode workers
that never run the model.
"""

from __future__ import annotations

import hashlib
import json
import os

from gendet import GendetError
from gendet import io as gio
from gendet.encoders.base import Encoder, EncoderSpec, Preprocessor

OFFLINE_DEFAULT = "spectrum:v1"
PRODUCTION_DEFAULT = "open_clip:ViT-L-14/openai"
SPECTRUM_VERSIONS = ("v1", "v2")


def _known_hint() -> str:
    return (f"known: {OFFLINE_DEFAULT}, open_clip:<arch>/<tag|none> for any open_clip model "
            f"(e.g. {PRODUCTION_DEFAULT}, open_clip:ViT-B-32/none, open_clip:GenDet-Debug-ViT/none)")


def parse_encoder_name(name: str) -> EncoderSpec:
    """Check an encoder name (no weights touched); unknown names raise GendetError listing the known ones."""
    spec = EncoderSpec.parse(name)
    if spec is None:
        raise GendetError(f"encoder {name!r}: not of the form family:arch[/pretrained]; {_known_hint()}")
    if spec.family == "spectrum" and spec.arch in SPECTRUM_VERSIONS and not spec.pretrained:
        return spec
    if spec.family == "open_clip":
        from gendet.encoders.openclip import check_open_clip_name

        check_open_clip_name(spec, hint=_known_hint())
        return spec
    raise GendetError(f"encoder {name!r}: unknown encoder; {_known_hint()}")


def list_encoders() -> list[str]:
    """Every name ``load_encoder`` accepts: the spectrum versions and each open_clip (arch, tag),
    plus ``<arch>/none`` (random init) for every open_clip architecture."""
    from gendet.encoders.openclip import open_clip_names

    return [f"spectrum:{v}" for v in SPECTRUM_VERSIONS] + open_clip_names()


def load_encoder(name: str, *, weights: str | None = None, device: str = "cpu", precision: str = "fp32") -> Encoder:
    """The encoder called ``name``, loaded on ``device``; see the module docstring for names."""
    spec = parse_encoder_name(name)
    if spec.family == "spectrum":
        from gendet.encoders.spectrum import SpectrumEncoder

        if weights:
            raise GendetError(f"{spec.name} has no weights; drop --weights {weights}")
        return SpectrumEncoder(spec.name, device=device, precision=precision)
    from gendet.encoders.openclip import OpenClipEncoder

    return OpenClipEncoder(spec.name, weights=weights, device=device, precision=precision)


def load_preprocess(name: str) -> Preprocessor:
    """The preprocessing of encoder ``name`` alone (no weights loaded): same cfg and hash as the
    loaded encoder's."""
    spec = parse_encoder_name(name)
    if spec.family == "spectrum":
        from gendet.encoders.spectrum import spectrum_preprocessor

        return spectrum_preprocessor(spec.arch)
    from gendet.encoders.openclip import open_clip_preprocessor

    return open_clip_preprocessor(spec)


def encoder_weights_arg(weights_ref: str | None) -> str | None:
    """The ``weights=`` to rebuild an encoder from its ``weights_ref``: a file or URL, or None when
    the name alone says it (random init ``none``, an open_clip hub tag, a weight-free encoder)."""
    if not weights_ref or weights_ref == "none" or weights_ref.startswith("open_clip-hub:"):
        return None
    return weights_ref


# A local weights file up to this size is identified by its bytes (sha256, well under a second);
# a larger or remote one by its storage fingerprint: hashing 1.7 GB on s3 would read it all.
SMALL_WEIGHTS_BYTES = 64 << 20


def weights_identity(name: str, weights: str | None) -> tuple[str, str]:
    """(reference, digest) of the weights encoder ``name`` computes with: what a feature store's
    variant key and a detector record, so features of other weights are never mixed or scored.

    Without ``weights`` the name fixes them: ``builtin`` (``spectrum``: no weights),
    ``random-init`` (``open_clip:<arch>/none``), ``open_clip-hub:<arch>/<tag>``; the reference is
    empty. With a file or URL: the reference is a local file's absolute path or the URL as given,
    the digest ``sha256:<hex>`` of a local file up to ``SMALL_WEIGHTS_BYTES``, else
    ``fingerprint:<hex>``, a hash of the storage's size and version (ETag, generation or mtime:
    ``gendet.io.fingerprint``), one metadata request."""
    spec = parse_encoder_name(name)
    if not weights:
        if spec.family == "spectrum":
            return "", "builtin"
        return "", "random-init" if spec.pretrained == "none" else f"open_clip-hub:{spec.arch}/{spec.pretrained}"
    if spec.family == "spectrum":
        raise GendetError(f"{spec.name} has no weights; drop --weights {weights}")
    fs, path = gio.fs_and_path(weights)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        info = {"type": "missing"}
    if info.get("type") != "file":
        raise GendetError(f"{weights}: weights file not found; pass --weights a checkpoint file (local path or fsspec URL)")
    stamp = gio.fingerprint(info)
    local = gio.is_local(fs)
    if local and stamp["size"] <= SMALL_WEIGHTS_BYTES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return os.path.abspath(path), f"sha256:{digest.hexdigest()}"
    fingerprint = "fingerprint:" + hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:32]
    return (os.path.abspath(path) if local else str(weights)), fingerprint


def feature_precision(name: str, precision: str) -> str:
    """The precision encoder ``name`` really computes in at ``precision``: ``spectrum`` runs its
    FFTs in fp32 whatever it is asked, so its features do not depend on ``--precision``."""
    return "fp32" if str(name).startswith("spectrum:") else precision
