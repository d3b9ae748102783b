"""One HTTP request format for every server of a gendet model (MLflow's ``/invocations`` and Ray
Serve's ``gendet serve``), so one client works against both.

A request is either JSON in MLflow's scoring formats, a column ``image`` of base64 image bytes
(``{"dataframe_split": {"columns": ["image"], "data": [[...]]}}``, ``{"dataframe_records": [{"image":
...}]}``, ``{"inputs": {"image": [...]}}`` or ``{"instances": [{"image": ...}]}``) with optional
``"params"``, or the raw bytes of one image (``Content-Type: image/*`` or
``application/octet-stream``). ``parse_request`` turns it into items (bytes, or the reason an item
cannot be read) and params, or raises ``BadRequest`` with the HTTP status and one line: a body over
``max_request_bytes`` (413), more than ``max_images`` images (400), an unknown or mistyped param (400),
another content type (415). ``reply_body`` is the answer: ``{"predictions": [reply, ...]}`` in strict
JSON (``gendet.serve.scorer``'s reply per image; masks base64).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from typing import Any

from gendet import GendetError, first_line
from gendet.serve.errors import ItemError

INPUT_COLUMN = "image"
URL_SCHEMES = ("http://", "https://")
LIMITS = {"max_images": 64, "max_request_bytes": 64 << 20, "max_pixels": 50_000_000}
PARAMS = {"masks": bool}
RAW_TYPES = ("application/octet-stream",)


class BadRequest(GendetError):
    """A request refused whole: ``status`` is the HTTP status, the message the one line answered."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_b64(value: Any, *, allow_urls: bool = False) -> bytes | Exception:
    """The image bytes of one ``image`` cell: base64, or (``allow_urls``) an http(s) URL read with
    ``gendet predict``'s bounds; an ItemError naming the fix otherwise (never fetched by default:
    no requests to addresses a client picks)."""
    if not isinstance(value, str):
        return ItemError(f"image must be a base64 string, got {type(value).__name__}")
    if "://" in value[:16]:
        if not allow_urls:
            return ItemError("urls_not_allowed: this server does not fetch URLs (an address chosen by a client); "
                             "send the image bytes, base64")
        if not value.lower().startswith(URL_SCHEMES):
            return ItemError("urls_not_allowed: only http:// and https:// URLs are fetched")
        from gendet.serve.predict import read_item

        return read_item(value)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        return ItemError(f"bad base64: {exc}")


def image_cells(payload: Any) -> list[Any]:
    """The ``image`` column of a JSON body in one of MLflow's formats (module docstring)."""
    if not isinstance(payload, Mapping):
        raise BadRequest("the body must be a JSON object: {\"inputs\": {\"image\": [BASE64, ...]}} or MLflow's "
                         "dataframe_split / dataframe_records / instances")
    if "dataframe_split" in payload:
        frame = payload["dataframe_split"] or {}
        columns = list(frame.get("columns") or [])
        if INPUT_COLUMN not in columns:
            raise BadRequest(f"dataframe_split has columns {columns}; send a column {INPUT_COLUMN!r} of base64 image bytes")
        at = columns.index(INPUT_COLUMN)
        return [row[at] if isinstance(row, list) and len(row) > at else None for row in frame.get("data") or []]
    for key in ("dataframe_records", "instances"):
        if key in payload:
            rows = payload[key] or []
            if not isinstance(rows, list) or any(not isinstance(r, Mapping) or INPUT_COLUMN not in r for r in rows):
                raise BadRequest(f"{key}: send a list of objects with an {INPUT_COLUMN!r} field of base64 image bytes")
            return [r[INPUT_COLUMN] for r in rows]
    if "inputs" in payload:
        inputs = payload["inputs"]
        cells = inputs.get(INPUT_COLUMN) if isinstance(inputs, Mapping) else inputs
        if not isinstance(cells, list):
            raise BadRequest(f"inputs: send {{\"{INPUT_COLUMN}\": [BASE64, ...]}}")
        return cells
    raise BadRequest(f"the body has {sorted(payload)[:5]}; send inputs, dataframe_split, dataframe_records or instances "
                     f"with an {INPUT_COLUMN!r} column of base64 image bytes")


def check_params(params: Any, *, masks_allowed: bool) -> dict[str, Any]:
    """The request's params, each known and of its type; a GenDet model asked for masks is refused."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise BadRequest("params must be a JSON object, e.g. {\"masks\": true}")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise BadRequest(f"unknown params {unknown}; this model takes {sorted(PARAMS)}")
    for key, kind in PARAMS.items():
        if key in params and not isinstance(params[key], kind):
            raise BadRequest(f"params {key}: must be {kind.__name__}, got {type(params[key]).__name__}")
    if params.get("masks") and not masks_allowed:
        raise BadRequest('params {"masks": true}: masks need a GAMMA model with segmentation heads '
                         "(`gendet train-gamma`); send the request without them")
    return dict(params)


def parse_request(body: bytes, content_type: str, *, limits: Mapping[str, int] = LIMITS, allow_urls: bool = False,
                  masks_allowed: bool = False) -> tuple[list[bytes | Exception], dict[str, Any]]:
    """(items, params) of one request (module docstring), or ``BadRequest``."""
    if len(body) > limits["max_request_bytes"]:
        raise BadRequest(f"request of {len(body)} bytes, over the limit of {limits['max_request_bytes']}; "
                         "send the images in several requests", status=413)
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    if kind.startswith("image/") or kind in RAW_TYPES:
        return [body if body else ItemError("empty_image")], {}
    if kind != "application/json":
        raise BadRequest(f"Content-Type {kind}: send application/json (base64 images, MLflow's formats) or one image's "
                         "bytes as image/* or application/octet-stream", status=415)
    try:
        payload = json.loads(body or b"{}")
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON ({first_line(exc, 120)})") from None
    cells = image_cells(payload)
    params = check_params(payload.get("params"), masks_allowed=masks_allowed)
    if len(cells) > limits["max_images"]:
        raise BadRequest(f"request has {len(cells)} images, at most {limits['max_images']} are scored per request; "
                         "send them in several requests")
    return [decode_b64(c, allow_urls=allow_urls) for c in cells], params


def reply_body(replies: Sequence[Mapping[str, Any]]) -> bytes:
    """``{"predictions": [...]}`` in strict JSON; a mask PNG as base64."""
    rows = [{k: (base64.b64encode(v).decode("ascii") if k == "mask_png" else v) for k, v in r.items()} for r in replies]
    return json.dumps({"predictions": rows}, allow_nan=False).encode("utf-8")
