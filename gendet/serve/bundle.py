"""Encoder weights that travel with a logged model, so a serving node needs no hub or bucket access.

A detector names its encoder's weights by reference (a file or URL, recorded with the digest of
the training features' weights, ``encoder_weights_digest``). When a model is logged
(``gendet.serve.pyfunc.log_detector``) and that reference is a file or URL, ``bundle_weights`` copies
the weights into the model's detector folder, ``encoder/<file name>``, beside ``encoder/weights.json``:
``{"file", "sha256"`` (of the bytes copied), ``"encoder_weights_digest"`` (the detector's),
``"source"`` (the reference, credentials redacted)``}``. It first checks that the file is the one the
detector was trained on (its identity against the recorded digest), as ``predict`` does.
``bundled_weights`` is what every loader calls: the bundled file's path after its sha256 and its
detector are checked, or None without a bundle (weights named by the encoder: a hub tag, random init,
the weight-free spectrum encoder; or a model logged before 0.9.0), when the reference is used.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from gendet import GendetError, first_line
from gendet import io as gio

log = logging.getLogger(__name__)

BUNDLE_DIR = "encoder"
BUNDLE_MANIFEST = "weights.json"
CHUNK = 8 << 20


def _copy_hashing(src: str, dst: str) -> str:
    """Stream ``src`` (any fsspec URL) to the local path ``dst``; the sha256 of the bytes."""
    digest = hashlib.sha256()
    fs, path = gio.fs_and_path(src)
    gio.makedirs(dst.rsplit("/", 1)[0])
    with fs.open(path, "rb") as f, open(dst, "wb") as out:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_weights(detector: Any, folder: str) -> str | None:
    """Copy ``detector``'s encoder weights into ``folder`` (module docstring); the bundled file's path,
    or None when the encoder's name fixes its weights. Refused in one line when the reference is not the
    file the detector was trained on."""
    from gendet.encoders.registry import encoder_weights_arg, weights_identity

    ref = encoder_weights_arg(detector.encoder_weights)
    if not ref:
        return None
    recorded = getattr(detector, "encoder_weights_digest", "")
    if recorded and (now := weights_identity(detector.encoder, ref)[1]) != recorded:
        raise GendetError(f"{gio.redact(ref)}: not the encoder weights the detector was trained on (digest {now[:24]}, "
                          f"the detector's {recorded[:24]}); restore those weights before logging the model")
    name = gio.basename(ref.rstrip("/")) or "weights"
    dst = gio.join(folder, BUNDLE_DIR, name)
    sha = _copy_hashing(ref, dst)
    gio.write_json_atomic(gio.join(folder, BUNDLE_DIR, BUNDLE_MANIFEST),
                          {"file": name, "sha256": sha, "encoder_weights_digest": recorded, "source": gio.redact(ref)})
    return dst


def bundled_weights(folder: str, detector: Any) -> str | None:
    """The path of the weights bundled in a (local) detector folder, checked: its bytes are those
    bundled and it belongs to ``detector``; None when the folder has no bundle."""
    manifest_url = gio.join(folder, BUNDLE_DIR, BUNDLE_MANIFEST)
    if not gio.exists(manifest_url):
        return None
    try:
        manifest = gio.read_json(manifest_url, max_bytes=1 << 16)
        path = gio.join(folder, BUNDLE_DIR, str(manifest["file"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise GendetError(f"{manifest_url}: not a weights manifest ({first_line(exc, 120)}); log the model again") from None
    if "/" in str(manifest["file"]) or not gio.exists(path):
        raise GendetError(f"{path}: the bundled encoder weights are missing; log the model again")
    if manifest.get("encoder_weights_digest") != getattr(detector, "encoder_weights_digest", ""):
        raise GendetError(f"{manifest_url}: weights bundled for another detector (digest "
                          f"{str(manifest.get('encoder_weights_digest'))[:24]}); log the model again")
    if _sha256(path) != manifest.get("sha256"):
        raise GendetError(f"{path}: the bundled encoder weights changed since the model was logged (sha256 differs); "
                          "log the model again")
    return path


def bundle_files(folder: str) -> dict[str, bytes]:
    """{``encoder/<name>``: bytes} of a folder's bundle (to ship a model to workers); empty without one."""
    manifest_url = gio.join(folder, BUNDLE_DIR, BUNDLE_MANIFEST)
    if not gio.exists(manifest_url):
        return {}
    name = str(gio.read_json(manifest_url, max_bytes=1 << 16)["file"])
    return {f"{BUNDLE_DIR}/{BUNDLE_MANIFEST}": gio.read_bytes(manifest_url),
            f"{BUNDLE_DIR}/{name}": gio.read_bytes(gio.join(folder, BUNDLE_DIR, name))}
