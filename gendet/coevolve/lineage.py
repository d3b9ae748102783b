"""Aligned generator weights and their lineage (CONTRACTS.md, "Aligned generator").

``DIR/NAME.safetensors`` holds the generator's state dict (safetensors: no pickle; the metadata
repeats the family config) and ``DIR/NAME.lineage.json`` its lineage: the family and the base
weights it started from (path and digest), the detector it was aligned against (URI, registered
version, digest), the ``AlignConfig``, the metrics before/after, and the digest of these weights.
Digests are sha256 over tensor names and bytes in name order (``state_digest``), so two files with
the same tensors share one whatever their metadata. ``load_aligned`` checks it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gendet import GendetError
from gendet import io as gio
from gendet.config import to_json
from gendet.zoo.config import config_hash, family_config
from gendet.zoo.models import build_model

LINEAGE_FORMAT = 1


def state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_digest(path: str) -> str:
    """``state_digest`` of a safetensors file of a zoo generator."""
    return state_digest(load_file(path))


def lineage_path(weights_path: str) -> str:
    return weights_path.removesuffix(".safetensors") + ".lineage.json"


def save_aligned(model: torch.nn.Module, family: str, path: str, lineage: dict[str, Any]) -> dict[str, Any]:
    """Write the weights and their lineage sidecar (atomically, weights first); returns the lineage."""
    if not path.endswith(".safetensors"):
        raise GendetError(f"{path}: aligned weights are written as .safetensors; name the file NAME.safetensors")
    cfg = family_config(family)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    full = {"format_version": LINEAGE_FORMAT, "family": family, "family_config_hash": config_hash(cfg),
            "weights": os.path.basename(path), "weights_digest": state_digest(state),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **lineage}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(state, tmp, metadata={"config": to_json(cfg), "config_hash": config_hash(cfg),
                                    "weights_digest": full["weights_digest"]})
    os.replace(tmp, path)
    gio.write_json_atomic(lineage_path(path), full)
    return full


def load_aligned(path: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(generator in eval mode, its lineage); the weights must match the lineage's digest."""
    sidecar = lineage_path(path)
    if not os.path.isfile(path) or not os.path.isfile(sidecar):
        raise GendetError(f"{path}: aligned weights need the file and its {os.path.basename(sidecar)}; "
                          "write them with gendet.coevolve.lineage.save_aligned")
    with open(sidecar) as f:
        lineage = json.load(f)
    if lineage.get("format_version") != LINEAGE_FORMAT:
        raise GendetError(f"{sidecar}: lineage format {lineage.get('format_version')}, this gendet reads {LINEAGE_FORMAT}")
    state = load_file(path)
    if state_digest(state) != lineage.get("weights_digest"):
        raise GendetError(f"{path}: weights do not match the digest in {os.path.basename(sidecar)}; rerun the round")
    model = build_model(family_config(lineage["family"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise GendetError(f"{path}: not a {lineage['family']} generator ({str(exc).splitlines()[0]})") from None
    return model.eval(), lineage
