"""A detector with its image encoder, loaded once: encoded image bytes in, one result dict out each.

Images are decoded exactly as ``gendet extract`` decodes them (``gendet.data.decode``) and go the
extraction job's way to the encoder (uint8 pixels to the encoder's device, finished there), so the
features match the store the detector was trained on bit for bit. A bad item gets ``error``
(the quarantine reason: ``not_an_image``, ``corrupt_image``, ``decompression_bomb``, ...) and the
others are still scored. This is what ``gendet predict``, ``gendet score`` and the served models run.

The reply (CONTRACTS.md, "The reply"): every item's dict has ``verdict`` (``fake``, ``real``,
``uncertain`` inside the band, or ``error``: never a verdict of its own), ``probability`` (calibrated
P(fake), None on error), ``band`` ([low, high], ``gendet.eval.metrics.band_low``), ``model`` (what
answered: ``name/version`` or the URI), ``encoder`` and ``encoder_digest``, ``error`` (empty when
scored); and, for clients of 0.8, ``score`` (= probability), ``is_fake`` (None on error) and
``threshold`` (= high).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from gendet import GendetError
from gendet.data import decode
from gendet.serve.errors import ItemError

NO_MASKS = "masks need a GAMMA model with segmentation heads (`gendet train-gamma`); this model has none"
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


def decode_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """RGB image from encoded bytes, decoded exactly as ``gendet extract`` decodes (same features);
    ItemError naming the quarantine reason (``not_an_image``, ``decompression_bomb``, ``too_large``
    over ``max_pixels``, ...) otherwise."""
    try:
        return decode.decode_image(data, max_pixels=max_pixels)
    except decode.BadSample as exc:
        # PIL names the BytesIO object (an address that changes every run): keep the words only
        raise ItemError(str(exc).split(" <_io.")[0]) from None


class Replier:
    """A model's replies (module docstring) from its probabilities: no encoder needed (``gendet score
    --features`` scores stored features with it)."""

    def __init__(self, detector: Any, threshold: float | None = None, model: str = ""):
        self.detector = detector
        self.band = detector.band(threshold)
        self.threshold = self.band[1]
        self.model = model
        """What answered, in every reply: ``name/version`` of a registered model, else its URI."""

    def reply(self, verdict: str, probability: float | None, error: str = "") -> dict[str, Any]:
        """One item's reply (module docstring)."""
        low, high = self.band
        return {"verdict": verdict, "probability": probability, "band": [low, high], "model": self.model,
                "encoder": self.detector.encoder, "encoder_digest": getattr(self.detector, "encoder_weights_digest", ""),
                "error": error, "score": probability, "is_fake": None if probability is None else verdict == "fake",
                "threshold": high}

    def error(self, reason: str) -> dict[str, Any]:
        """The reply of an item that was not scored: ``verdict`` ``error``, never a verdict of real."""
        return self.reply("error", None, reason or "error")

    def result(self, score: float) -> dict[str, Any]:
        """A scored row; a score that is not a finite probability is an error row, never a verdict
        (and never a bare NaN, which strict JSON parsers refuse)."""
        from gendet.eval.metrics import verdict

        score = float(score)
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            return self.error(f"non_finite_score: the model gave {score}; the image or the model is broken")
        return self.reply(verdict(score, *self.band), score)


class ImageScorer(Replier):
    """A Detector with its encoder, loaded once: encoded image bytes in, one result dict out each."""

    def __init__(self, detector: Any, encoder: Any, threshold: float | None = None, max_pixels: int | None = None,
                 model: str = ""):
        if detector.preprocess_hash and encoder.preprocess_hash != detector.preprocess_hash:
            raise GendetError(f"encoder {encoder.name}: preprocess_hash {encoder.preprocess_hash[:12]} differs "
                              f"from the detector's {detector.preprocess_hash[:12]}; load the encoder version "
                              "the detector was trained with")
        super().__init__(detector, threshold, model)
        self.encoder = encoder
        self.max_pixels = max_pixels

    @classmethod
    def from_detector(cls, detector: Any, *, device: str = "cpu", threshold: float | None = None,
                      max_pixels: int | None = None, model: str = "", precision: str = "fp32",
                      bundled: str | None = None) -> ImageScorer:
        """``bundled``: the model's own copy of the encoder weights, already checked
        (``gendet.serve.bundle.bundled_weights``); otherwise the detector's reference is read."""
        from gendet.encoders.registry import encoder_weights_arg, load_encoder, weights_identity

        if bundled:
            encoder = load_encoder(detector.encoder, weights=bundled, device=device, precision=precision)
            return cls(detector, encoder, threshold, max_pixels, model)
        weights = encoder_weights_arg(detector.encoder_weights)
        recorded = getattr(detector, "encoder_weights_digest", "")  # empty: saved before 0.4.0
        if recorded and (now := weights_identity(detector.encoder, weights)[1]) != recorded:
            raise GendetError(f"{weights or detector.encoder}: not the encoder weights the detector was trained on (digest "
                              f"{now[:24]}, the detector's {recorded[:24]}); restore those weights or retrain on these")
        encoder = load_encoder(detector.encoder, weights=weights, device=device, precision=precision)
        return cls(detector, encoder, threshold, max_pixels, model)

    def pixels(self, image: Image.Image) -> np.ndarray:
        """One decoded image -> the uint8 pixels the encoder takes (the extraction job's form)."""
        return self.encoder.preprocessor.pixels(image)

    def features(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """The encoder's features [N, dim] of decoded images or their ``pixels`` (what the detector
        was trained on)."""
        # the extraction job's path: uint8 pixels to the encoder's device, finished there
        pre = self.encoder.preprocessor
        stack = np.stack([im if isinstance(im, np.ndarray) else pre.pixels(im) for im in images])
        return self.encoder(pre.finish(torch.from_numpy(stack).to(self.encoder.device))).float().cpu().numpy()

    @torch.inference_mode()
    def score_images(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        features = self.features(images)
        with one_thread_if(len(features) <= SMALL_BATCH):
            scores = self.detector.score(features)
        return np.asarray(scores, dtype=np.float64).reshape(-1)

    def decoded(self, items: Sequence[bytes | Exception]) -> tuple[list[dict[str, Any]], list[np.ndarray],
                                                                   list[int], list[tuple[int, int]]]:
        """(results with ``error`` filled for the items that failed, the encoder pixels of the others,
        their indices, their images' (w, h) sizes)."""
        results: list[dict[str, Any]] = [{} for _ in items]  # filled for every item: scored or error
        images, where, sizes = [], [], []
        for i, item in enumerate(items):
            try:
                if isinstance(item, Exception):
                    raise ItemError(str(item))
                # Each image is reduced to its encoder-sized pixels as soon as it is decoded, so a
                # request holds one full-resolution image at a time, not all of them.
                image = decode_image(item, self.max_pixels)
                images.append(self.pixels(image))
                where.append(i)
                sizes.append(image.size)
            except ItemError as exc:
                results[i] = self.error(str(exc))
            except Exception as exc:  # noqa: BLE001 - an image the transforms choke on fails alone (as in extraction)
                results[i] = self.error(f"preprocess_error: {type(exc).__name__}: {exc}")
        return results, images, where, sizes

    def score_bytes(self, items: Sequence[bytes | Exception], *, masks: bool = False) -> list[dict[str, Any]]:
        """One reply per item, in order (module docstring); ``verdict`` ``error`` when the item is an
        exception already (a failed read) or does not decode. ``masks`` is for GAMMA
        models (``gendet.serve.gamma_scorer``); a GenDet detector has none to give."""
        results, pixels, where, sizes = self.decoded(items)
        for i, reply in zip(where, self.score_pixels(pixels, sizes, masks=masks)):
            results[i] = reply
        return results

    def score_pixels(self, pixels: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]], *,
                     masks: bool = False) -> list[dict[str, Any]]:
        """One reply per image already reduced to the encoder's ``pixels`` (``sizes``: each image's
        own (w, h), for GAMMA's masks): what ``score_bytes`` and ``gendet score``'s actors run."""
        if masks:
            raise GendetError(NO_MASKS)
        return [self.result(score) for score in self.score_images(pixels)] if len(pixels) else []

    @property
    def has_masks(self) -> bool:
        """Whether ``score_bytes`` gives ``fake_fraction`` and, asked, masks (GAMMA with segmentation heads)."""
        return False

