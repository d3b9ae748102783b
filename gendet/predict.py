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

Python API: ``load_scorer(uri)`` once, then ``predict(scorer, inputs)`` or
``scorer.score_bytes([...])`` (what the MLflow pyfunc model serves).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import posixpath
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from gendet import GendetError
from gendet import io as gio
from gendet.extract import reader

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DETECTOR_FILE = "detector.json"  # marks a saved Detector directory (gendet.detector)
MLMODEL_FILE = "MLmodel"  # marks an MLflow model directory
REGISTRY_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
SMALL_BATCH = 256  # up to this many rows the heads run single-threaded (see one_thread_if)


@contextlib.contextmanager
def one_thread_if(condition: bool) -> Iterator[None]:
    """Run torch single-threaded inside (then restore the thread count) when ``condition`` holds.

    The heads on a few rows are hundreds of tiny ops; with several intra-op threads each op pays a
    thread barrier, and on a shared CPU a descheduled thread turns ~2 ms into ~200 ms (measured,
    benchmarks/predict.py). The thread count is process-wide: a concurrent encoder call may briefly
    run on one thread, which changes its speed, never its result.
    """
    before = torch.get_num_threads()
    if condition and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class ItemError(Exception):
    """One input that cannot be scored; its message becomes that item's ``error``."""


def decode_image(data: bytes) -> Image.Image:
    """RGB image from encoded bytes, decoded exactly as ``gendet extract`` decodes (same features);
    ItemError naming the quarantine reason (``not_an_image``, ``decompression_bomb``, ...) otherwise."""
    try:
        return reader.decode_image(data)
    except reader.BadImage as exc:
        # PIL names the BytesIO object (an address that changes every run): keep the words only
        raise ItemError(str(exc).split(" <_io.")[0]) from None


def encoder_weights_arg(weights_ref: str | None) -> str | None:
    """The ``weights=`` to rebuild an encoder from its ``weights_ref``: a file or URL, or None when
    the name alone says it (random init ``none``, an open_clip hub tag, a weight-free encoder)."""
    if not weights_ref or weights_ref == "none" or weights_ref.startswith("open_clip-hub:"):
        return None
    return weights_ref


class ImageScorer:
    """A Detector with its encoder, loaded once: encoded image bytes in, one result dict out each."""

    def __init__(self, detector: Any, encoder: Any, threshold: float | None = None):
        if detector.preprocess_hash and encoder.preprocess_hash != detector.preprocess_hash:
            raise GendetError(f"encoder {encoder.name}: preprocess_hash {encoder.preprocess_hash[:12]} differs "
                              f"from the detector's {detector.preprocess_hash[:12]}; load the encoder version "
                              "the detector was trained with")
        self.detector, self.encoder = detector, encoder
        self.threshold = float(detector.threshold if threshold is None else threshold)

    @classmethod
    def from_detector(cls, detector: Any, *, device: str = "cpu", threshold: float | None = None) -> "ImageScorer":
        from gendet.encoders import load_encoder

        encoder = load_encoder(detector.encoder, weights=encoder_weights_arg(detector.encoder_weights),
                               device=device)
        return cls(detector, encoder, threshold)

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The encoder's features [N, dim] of decoded images (what the detector was trained on)."""
        # the extraction job's path: uint8 pixels to the encoder's device, finished there
        pre = self.encoder.preprocessor
        pixels = torch.from_numpy(np.stack([pre.pixels(im) for im in images])).to(self.encoder.device)
        return self.encoder(pre.finish(pixels)).float().cpu().numpy()

    @torch.inference_mode()
    def score_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        features = self.features(images)
        with one_thread_if(len(features) <= SMALL_BATCH):
            scores = self.detector.score(features)
        return np.asarray(scores, dtype=np.float64).reshape(-1)

    def result(self, score: float) -> dict[str, Any]:
        return {"score": float(score), "is_fake": bool(score > self.threshold), "threshold": self.threshold}

    def score_bytes(self, items: Sequence[bytes | Exception]) -> list[dict[str, Any]]:
        """One dict per item, in order: ``score``/``is_fake``/``threshold``, or ``error`` when the
        item is an exception already (a failed read) or does not decode."""
        results: list[dict[str, Any]] = [{} for _ in items]
        images, where = [], []
        for i, item in enumerate(items):
            try:
                if isinstance(item, Exception):
                    raise ItemError(str(item))
                images.append(decode_image(item))
                where.append(i)
            except ItemError as exc:
                results[i] = {"error": str(exc)}
        if images:
            for i, score in zip(where, self.score_images(images)):
                results[i] = self.result(score)
        return results


def load_scorer(uri: str, *, device: str = "cpu", threshold: float | None = None) -> ImageScorer:
    """Load a model once: ``models:/…`` or ``runs:/…``, or a directory (local or fsspec URL) holding a
    saved Detector or an MLflow model."""
    if not uri.startswith(REGISTRY_SCHEMES):
        if gio.exists(gio.join(uri, DETECTOR_FILE)):
            from gendet.detector import Detector

            return ImageScorer.from_detector(Detector.load(uri), device=device, threshold=threshold)
        if not gio.exists(gio.join(uri, MLMODEL_FILE)):
            raise GendetError(f"--model {uri}: neither a saved detector ({DETECTOR_FILE}) nor an MLflow model "
                              "(MLmodel) is there; pass models:/NAME@ALIAS, runs:/RUN/PATH or such a directory")
    from gendet.pyfunc import load_pyfunc_scorer

    return load_pyfunc_scorer(uri, device=device, threshold=threshold)


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
    except FileNotFoundError:
        return ItemError("not found")
    except IsADirectoryError:
        return ItemError("is a directory")
    except Exception as exc:  # network errors, permissions, bad protocols: one line for the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return ItemError(f"unreadable: {type(exc).__name__}: {first[:200]}")


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
