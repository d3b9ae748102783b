"""φ: the frozen champion's representation of an image, with gradients, and the measurements of
a generator against it (catch rate, PSNR, SSIM).

φ(x) for an image x (float [B, 3, H, W] in [-1, 1]) is what the detector's classifier reads:

1. the offline encoder's features of x, computed by ``SpectrumEncoder``'s own code (the body of
   its ``__call__`` without ``inference_mode``) on a float canvas made in torch the way the
   encoder's PIL preprocessing makes it: ``spectrum:v2`` takes the largest native center crop of
   256/128/64 px and tiles it to 256 px; ``spectrum:v1`` upscales images under 128 px with PIL's
   bicubic kernel written as two matrices and center-crops 128 px. Where the real path rounds to
   uint8 (the generator's output, each PIL resampling pass) φ rounds too, straight-through: the
   forward value is the extracted feature (v1's spectra of upscaled crops are dominated by that
   rounding noise at high frequencies), the gradient passes
   as if nothing were rounded, so it reaches every pixel;
2. through the detector's frozen networks up to the classifier's input: for the teacher–student
   rungs (ts_real, ts_fake, GenDet) the discrepancy D = (N_t(f) − N_s(f))² (Eq. 4, [B, z_dim]);
   for ``teacher`` its body's output z; for ``linear_probe`` the feature f itself.

Catch rates are measured on the real path only (uint8 images -> the encoder's PIL preprocessing
-> features -> ``Detector.score`` at its calibrated threshold), never on φ's approximation.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gendet import GendetError
from gendet.encoders.registry import load_encoder
from gendet.encoders.spectrum import V2_CANVAS, V2_CROPS, SpectrumEncoder
from gendet.method.gendet.detector import Detector
from gendet.method.gendet.networks import discrepancy

# The encoder's computation without its inference_mode decorator (functools.wraps keeps it).
_SPECTRUM_BODY = getattr(SpectrumEncoder.__call__, "__wrapped__", None)


@functools.lru_cache(maxsize=16)
def _pil_bicubic_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] weights of PIL's bicubic resampling (a = -0.5, its window and edge rules)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale

    def cubic(x: float) -> float:
        x, a = abs(x), -0.5
        if x < 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        return (((x - 5) * x + 8) * x - 4) * a if x < 2 else 0.0

    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        w = torch.tensor([cubic((x - center + 0.5) / filterscale) for x in range(lo, hi)], dtype=torch.float64)
        m[i, lo:hi] = w / w.sum()
    return m.float()


def quantise(x01: torch.Tensor) -> torch.Tensor:
    """Round to the uint8 grid in the forward pass, identity in the backward (straight-through):
    φ sees the values extraction sees, the gradient sees no rounding."""
    return x01 + ((x01.clamp(0, 1) * 255).round() / 255 - x01).detach()


def pil_bicubic(x01: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL's ``Image.resize(BICUBIC)`` of [B, 3, H, W] in torch: horizontal pass, then vertical,
    each clipped and rounded to uint8 as PIL does (straight-through)."""
    mh, mw = _pil_bicubic_matrix(x01.shape[-2], h), _pil_bicubic_matrix(x01.shape[-1], w)
    return quantise(mh @ quantise(x01 @ mw.T))


def spectrum_canvas(x01: torch.Tensor, version: str) -> torch.Tensor:
    """The encoder's input geometry in torch: [B, 3, H, W] in [0, 1] -> its canvas (see module doc)."""
    h, w = x01.shape[-2:]
    if version == "v2":
        if min(h, w) < V2_CROPS[-1]:
            scale = V2_CROPS[-1] / min(h, w)
            x01 = pil_bicubic(x01, max(64, round(h * scale)), max(64, round(w * scale)))
            h, w = x01.shape[-2:]
        size = next(s for s in V2_CROPS if s <= min(h, w))
        top, left = (h - size) // 2, (w - size) // 2
        crop = x01[..., top:top + size, left:left + size]
        reps = V2_CANVAS // size
        return crop.repeat(1, 1, reps, reps)
    size = 128
    if min(h, w) < size:
        scale = size / min(h, w)
        x01 = pil_bicubic(x01, max(size, round(h * scale)), max(size, round(w * scale)))
        h, w = x01.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x01[..., top:top + size, left:left + size]


class Representation:
    """φ of one frozen detector (see the module docstring); ``__call__`` keeps the graph."""

    def __init__(self, detector: Detector):
        if not detector.encoder.startswith("spectrum:"):
            raise GendetError(f"detector encoder {detector.encoder or '(none)'!r}: alignment needs a differentiable "
                              "encoder; only spectrum:v1 / spectrum:v2 detectors are supported")
        if _SPECTRUM_BODY is None:
            raise GendetError("SpectrumEncoder.__call__ has no __wrapped__ body; gendet.coevolve needs the undecorated "
                              "encoder (upgrade gendet)")
        self.detector = detector
        self.encoder = load_encoder(detector.encoder)
        if self.encoder.dim != detector.feature_dim:
            raise GendetError(f"detector expects {detector.feature_dim}-d features, {detector.encoder} gives "
                              f"{self.encoder.dim}; load the detector its encoder made")
        for net in detector.nets.values():
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's features of float images in [-1, 1], differentiable."""
        canvas = spectrum_canvas(quantise((x.float() + 1) / 2), self.encoder.version)
        return _SPECTRUM_BODY(self.encoder, canvas)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        nets, method = self.detector.nets, self.detector.method
        if method == "linear_probe":
            return f
        if method == "teacher":
            return nets["teacher"].body(f)
        return discrepancy(nets["teacher"], nets["student"], f)

    def cosine_distance(self, generated: torch.Tensor, photos: torch.Tensor) -> torch.Tensor:
        """1 − cos(φ(G(x)), φ(x)) per image; the photo's side is a constant target (REPA)."""
        with torch.no_grad():
            target = self(photos)
        return 1 - F.cosine_similarity(self(generated), target, dim=1)

    def store_features(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Features of uint8 [N, H, W, 3] images exactly as extraction makes them (PIL preprocessing)."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.encoder.preprocess(Image.fromarray(im)) for im in images[start:start + batch_size]])
            out.append(self.encoder(batch).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.encoder.dim), np.float32)

    def caught(self, images: np.ndarray) -> np.ndarray:
        """bool [N]: the detector scores the image fake at its calibrated threshold."""
        return self.detector.score(self.store_features(images)) > self.detector.threshold


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11 px Gaussian window, sigma 1.5, per channel) of two uint8
    [N, H, W, 3] stacks: the structural fidelity proxy reported next to PSNR."""
    x, y = (torch.from_numpy(np.ascontiguousarray(v)).permute(0, 3, 1, 2).double() / 255 for v in (a, b))
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5 ** 2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2).expand(3, 1, 11, 11).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())
