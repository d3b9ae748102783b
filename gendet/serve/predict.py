"""``gendet predict``: score images, folders and URLs with a trained detector.

``gendet predict --model URI PATH_OR_URL... [--batch-size N] [--out FILE]`` prints one JSON line per
image: ``path``, ``score`` (P(fake)), ``is_fake`` (score > threshold) and ``threshold`` (the model's
calibrated threshold; 0.5 for a detector trained without calibration). ``URI`` is
``models:/gendet@champion``, ``models:/gendet/3``, ``runs:/<run>/detector``, or a directory (local
or fsspec URL) of a saved Detector or of an MLflow model; everything else (encoder name and
weights reference, preprocessing, threshold) comes from the model.

Folders are walked recursively in sorted order and their image files (by extension) scored; any
fsspec URL works as an input. Images are decoded exactly as ``gendet extract`` decodes them, so
the features match training. A bad item gets a line with ``error`` instead of a score (``not
found``, ``unreadable: ...``, or extract's quarantine reason: ``not_an_image``, ``corrupt_image``,
``decompression_bomb`` for images over PIL's pixel limit, ...) and the others are still scored. The
exit code is 0 when at least one image was scored.

Python API: ``gendet.serve.scorer.load_scorer(uri)`` once, then ``predict(scorer, inputs)`` or
``scorer.score_bytes([...])`` (what the MLflow pyfunc model serves).
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tqdm import tqdm

from gendet import GendetError, first_line
from gendet import io as gio
from gendet.serve.scorer import ImageScorer, ItemError, load_scorer

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

__all__ = ["ImageScorer", "expand_inputs", "iter_predictions", "load_scorer", "predict", "read_item"]


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files as given; folders replaced by their image files, recursively, sorted."""
    out: list[str] = []
    for item in inputs:
        try:
            fs, path = gio.fs_and_path(item)
            is_dir = fs.isdir(path)
        except Exception:  # unknown protocol, unreachable host: reported when read
            is_dir = False
        if not is_dir:
            out.append(item)
            continue
        found = sorted(p for p in fs.find(path) if p.lower().endswith(IMAGE_SUFFIXES)
                       and not gio.basename(p).startswith("."))
        # each file keeps the folder as the user wrote it (a relative path, a URL with its protocol)
        out.extend(gio.join(item, posixpath.relpath(p, path)) for p in found)
    return out


def read_item(url: str) -> bytes | Exception:
    """The bytes at ``url``, or the exception (as a one-line ItemError) when it cannot be read."""
    try:
        return gio.read_bytes(url)
    except FileNotFoundError as exc:
        cause = exc.__cause__  # fsspec's HTTP filesystem turns every failure into FileNotFoundError
        status = getattr(cause, "status", None)
        if cause is None or isinstance(cause, FileNotFoundError) or status in (404, 410):
            return ItemError("not found")
        if status is not None:
            return ItemError(f"unreadable: HTTP {status}")
        return ItemError(f"unreachable: {type(cause).__name__}: {first_line(cause, 200)}")
    except IsADirectoryError:
        return ItemError("is a directory")
    except Exception as exc:  # network errors, permissions, bad protocols: one line for the user
        return ItemError(f"unreadable: {type(exc).__name__}: {first_line(exc, 200)}")


def iter_predictions(scorer: ImageScorer, inputs: Sequence[str], *, batch_size: int = 32,
                     progress: bool | None = None) -> Iterator[dict[str, Any]]:
    """One result dict per expanded input (``path`` first), in input order, batch by batch."""
    if batch_size < 1:
        raise GendetError(f"--batch-size {batch_size} must be >= 1")
    paths = expand_inputs(inputs)
    bar = tqdm(total=len(paths), unit="img", disable=None if progress is None else not progress, file=sys.stderr)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        for path, result in zip(chunk, scorer.score_bytes([read_item(p) for p in chunk])):
            yield {"path": path, **result}
        bar.update(len(chunk))
    bar.close()


def predict(model: str | ImageScorer, inputs: Sequence[str], *, batch_size: int = 32,
            device: str = "cpu") -> list[dict[str, Any]]:
    """Score ``inputs`` (files, folders, URLs) with ``model`` (a URI or a loaded ImageScorer)."""
    scorer = model if isinstance(model, ImageScorer) else load_scorer(model, device=device)
    return list(iter_predictions(scorer, inputs, batch_size=batch_size, progress=False))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="URI",
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/PATH, or a local model directory")
    parser.add_argument("inputs", nargs="+", metavar="PATH_OR_URL", help="images, folders (recursive) or fsspec URLs")
    parser.add_argument("--batch-size", type=int, default=32, help="images encoded together (default 32)")
    parser.add_argument("--out", metavar="FILE",
                        help="write the JSON lines here (path or fsspec URL) instead of stdout")
    parser.add_argument("--device", default="cpu",
                        help="torch device for the encoder (default cpu; the small heads run on CPU)")
    parser.add_argument("--threshold", type=float, help="override the model's calibrated threshold")
    parser.add_argument("--tracking-uri",
                        help="MLflow tracking URI for models:/ and runs:/ (default: MLFLOW_TRACKING_URI)")


def run(args: argparse.Namespace) -> int:
    if args.tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri)
    scorer = load_scorer(args.model, device=args.device, threshold=args.threshold)
    lines, scored = [], 0
    for row in iter_predictions(scorer, args.inputs, batch_size=args.batch_size):
        scored += "score" in row
        line = json.dumps(row)
        if args.out:
            lines.append(line)
        else:
            print(line, flush=True)
    if args.out:
        gio.write_bytes_atomic(args.out, "".join(f"{line}\n" for line in lines).encode("utf-8"))
    if not scored:
        raise GendetError(f"no image could be scored among {', '.join(args.inputs)[:200]}; "
                          "see the error of each item above and pass readable images")
    return 0
