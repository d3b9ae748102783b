"""Which shards has this model judged? The state of ``gendet refresh`` (no Ray, no MLflow).

"New" is not "extracted by this run": a run that extracts shards and dies before scoring them, or
a champion that changes, must not leave shards unjudged. So refresh scores every shard of SHARDS
that is extracted and not yet scored by *this* model, kept per model in one JSON file beside
the store (a URL every node reaches, like the store itself)::

    FEATURES/_refresh/<variant>/<model-key>.json

``<model-key>`` is ``<name>-v<version>`` for a registered model (``models:/NAME@champion`` is
resolved to its version before any work, so a promotion mid-run cannot mix two models) and
``sha-<digest>`` for a detector directory or run URI (its detector.json and weights hashed). The
file holds, per shard stem, a digest of the shard's stats file when it was scored (a shard
re-extracted from a changed tar is scored again) and, per subset, the model's latest verdict:
what the alert signal exports while that model is the one judged. A run records shards only after
their verdict is logged and written, so a crash in between scores them again: alerts come at
least once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from gendet import GendetError
from gendet import io as gio

STATE_DIR = "_refresh"
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class ModelRef:
    """The model a refresh judges with, pinned: what the user named and what is loaded."""

    uri: str
    """As given: ``models:/NAME@champion``, a directory, ``runs:/…``."""
    load_uri: str
    """What is loaded: ``models:/NAME/VERSION`` for a registered model, else ``uri``."""
    digest: str
    """sha256 of the detector's description and weights (``model_digest``)."""
    name: str | None = None
    version: str | None = None

    @property
    def key(self) -> str:
        """File name of this model's state: one per registered version, or per digest."""
        if self.version is not None:
            return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', str(self.name))}-v{self.version}"
        return f"sha-{self.digest[:16]}"

    @property
    def label(self) -> str:
        """The ``model`` tag of the metrics: the registered name, else the URI."""
        return self.name or self.uri

    @property
    def version_label(self) -> str:
        """The ``version`` tag of the metrics: the registered version, else the digest's head."""
        return self.version if self.version is not None else self.digest[:12]


def parse_registered(uri: str) -> tuple[str, str, str] | None:
    """(name, alias, version) of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (one of
    alias and version empty); None for every other URI (directories, ``runs:/``, ``models:/m-…``)."""
    if not str(uri).startswith("models:/"):
        return None
    rest = str(uri)[len("models:/"):].rstrip("/")
    name, at, alias = rest.partition("@")
    if at and name and alias:
        return name, alias, ""
    name, slash, version = rest.partition("/")
    if slash and name and version.isdigit():
        return name, "", version
    return None


def model_digest(detector: Any) -> str:
    """sha256 of a detector's ``args()`` (threshold, calibration, encoder, ...) and its networks'
    weights in name order: two directories holding the same detector share it."""
    h = hashlib.sha256(json.dumps(detector.args(), sort_keys=True, default=str).encode())
    for net_name in sorted(detector.nets):
        state = detector.nets[net_name].state_dict()
        for key in sorted(state):
            h.update(f"{net_name}.{key}".encode())
            h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def shard_digest(stats: Mapping[str, Any]) -> str:
    """What identifies one extraction of a shard: its stats file's content (the done marker)."""
    return hashlib.sha256(json.dumps(stats, sort_keys=True, default=str).encode()).hexdigest()[:16]


def state_url(store_url: str, variant_url: str, model: ModelRef) -> str:
    return gio.join(store_url, STATE_DIR, gio.basename(variant_url), f"{model.key}.json")


def empty_state(model: ModelRef) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "model": {**asdict(model), "key": model.key}, "scored": {}, "subsets": {}}


def load_state(url: str, model: ModelRef) -> dict[str, Any]:
    """The state at ``url``, or an empty one when this model has judged nothing here yet."""
    if not gio.exists(url):
        return empty_state(model)
    try:
        state = gio.read_json(url)
    except ValueError as exc:
        raise GendetError(f"{url}: refresh state is not JSON ({exc}); delete it and the next refresh scores every "
                          "extracted shard with this model again") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise GendetError(f"{url}: refresh state format {state.get('format_version') if isinstance(state, dict) else '?'}, "
                          f"this gendet reads {FORMAT_VERSION}; delete it to score every extracted shard again")
    if state.get("model", {}).get("key") != model.key:
        raise GendetError(f"{url}: refresh state of model {state.get('model', {}).get('key')!r}, not {model.key!r}; "
                          "delete the file (it was copied or renamed)")
    return state


def unscored(state: Mapping[str, Any], done: Mapping[str, Mapping[str, Any]], stems: Iterable[str]) -> list[str]:
    """The stems of ``stems`` that are extracted (in ``done``: stem -> stats) and not scored by
    the state's model on these very features."""
    scored = state.get("scored", {})
    return sorted(s for s in set(stems) if s in done and scored.get(s, {}).get("stats") != shard_digest(done[s]))


def record(state: Mapping[str, Any], *, stems: Iterable[str], done: Mapping[str, Mapping[str, Any]],
           verdicts: Mapping[str, Mapping[str, Any]], run: str | None, at: float) -> dict[str, Any]:
    """A new state with ``stems`` scored and each judged subset's verdict replaced (``verdicts``:
    subset -> ``gendet.eval.slip.verdicts_dict`` entry). Written by ``save_state`` once the verdict
    is out."""
    scored = dict(state.get("scored", {}))
    for stem in stems:
        scored[stem] = {"stats": shard_digest(done[stem]), "run": run, "at": at}
    subsets = dict(state.get("subsets", {}))
    for subset, verdict in verdicts.items():
        subsets[subset] = {**{k: v for k, v in verdict.items() if k != "subset"}, "run": run, "at": at}
    return {**state, "scored": dict(sorted(scored.items())), "subsets": dict(sorted(subsets.items())), "updated_at": at}


def save_state(url: str, state: Mapping[str, Any]) -> None:
    gio.write_json_atomic(url, dict(state))


def slipped_subsets(state: Mapping[str, Any]) -> list[str]:
    """Subsets whose latest verdict by this model is an alert (the model's standing alert)."""
    return sorted(s for s, v in state.get("subsets", {}).items() if v.get("slipped"))
