"""Manipulations with pixel masks (gendet/data/manipulations.py) and their shards
(gendet/data/manipulation_shards.py), on real tar files."""

import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from gendet import GendetError
from gendet.config import ConfigError
from gendet.data.manipulation_shards import ManipulateConfig, build_manipulated_shards, read_masks
from gendet.data.manipulations import (
    copy_move,
    decode_mask,
    encode_mask,
    global_perturbation,
    manipulate,
    perturb,
    region_masks,
    splice,
)
from gendet.data.shards import Sample, ShardWriter, group_samples, iter_tar_members, list_shards, parse_sample


def _photo(seed=0, size=(48, 64)):
    """A textured image: every pixel differs from its neighbours, so any move shows."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def _changed(a, b):
    return (a != b).any(-1)


def test_region_masks_cover_the_area_range_and_repeat_with_the_seed():
    masks = region_masks(200, 40, 56, np.random.default_rng(3))
    fractions = masks.mean((1, 2))
    assert masks.shape == (200, 40, 56) and masks.dtype == bool
    assert fractions.min() > 0.08 and fractions.max() <= 0.55  # ellipses fill ~pi/4 of their 15-50 % box
    assert np.median(fractions) > 0.15
    assert np.array_equal(masks, region_masks(200, 40, 56, np.random.default_rng(3)))


def _zoo_masks_before(count, size, rng, area=(0.15, 0.5)):
    """The zoo's own mask code before the data layer took it over (gendet 0.4): the reference."""
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((count, size, size), dtype=bool)
    for i in range(count):
        frac, aspect = rng.uniform(*area), rng.uniform(0.5, 2.0)
        h = min(size, max(2, int(round(size * np.sqrt(frac * aspect)))))
        w = min(size, max(2, int(round(size * np.sqrt(frac / aspect)))))
        top, left = int(rng.integers(size - h + 1)), int(rng.integers(size - w + 1))
        if rng.random() < 0.5:
            masks[i, top:top + h, left:left + w] = True
        else:
            cy, cx = top + h / 2, left + w / 2
            masks[i] = ((yy + 0.5 - cy) / (h / 2)) ** 2 + ((xx + 0.5 - cx) / (w / 2)) ** 2 <= 1.0
    return masks


def test_the_zoo_draws_the_same_inpainting_masks_from_the_data_layer():
    from gendet.zoo.regenerate import random_masks

    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    assert np.array_equal(random_masks(50, 64, rng_a), _zoo_masks_before(50, 64, rng_b))
    assert rng_a.random() == rng_b.random()  # the generator is left where it was: later draws unchanged too


def test_splice_mask_is_exactly_the_pixels_taken_from_the_donor():
    real, donor = _photo(0), _photo(1, (80, 80))
    out = splice(real, donor, np.random.default_rng(5))
    mask = out.mask.astype(bool)
    assert out.image.dtype == np.uint8 and out.image.shape == real.shape and out.mask.shape == real.shape[:2]
    assert set(np.unique(out.mask)) <= {0, 1}
    assert np.array_equal(out.image[~mask], real[~mask])  # outside: the real, byte for byte
    assert _changed(out.image, real)[mask].mean() > 0.95  # inside: donor pixels (a few may match by chance)
    assert out.kind == "splice" and out.fraction == pytest.approx(mask.mean()) and out.generated_fraction == out.fraction
    assert 0.08 <= out.fraction <= 0.55 and out.detail["donor_resized"] is False
    # a window of the donor at its native grid: each masked row is a run of consecutive donor pixels
    rows = np.flatnonzero(mask.any(1))
    r = rows[len(rows) // 2]
    cols = np.flatnonzero(mask[r])
    hits = [(y, x) for y in range(80) for x in range(80 - len(cols) + 1)
            if np.array_equal(donor[y, x:x + len(cols)], out.image[r, cols])]
    assert hits


def test_feathered_splice_blends_the_edge_and_keeps_the_core():
    real, donor = _photo(0), _photo(1)
    hard = splice(real, donor, np.random.default_rng(5))
    soft = splice(real, donor, np.random.default_rng(5), feather=2.0)
    assert soft.detail["feather"] == 2.0
    blended = _changed(soft.image, real) & ~soft.mask.astype(bool)
    assert blended.any()  # pixels just outside the mask carry some donor
    assert abs(soft.fraction - hard.fraction) < 0.05


def test_copy_move_pastes_the_photo_into_itself_and_masks_the_destination():
    real = _photo(2)
    out = copy_move(real, np.random.default_rng(9))
    mask = out.mask.astype(bool)
    assert np.array_equal(out.image[~mask], real[~mask])
    assert _changed(out.image, real)[mask].mean() > 0.95
    assert out.generated_fraction == 0.0 and out.fraction > 0
    sy, sx = out.detail["source_offset"]
    ty, tx = out.detail["offset"]
    assert (sy, sx) != (ty, tx)
    ys, xs = np.nonzero(mask)
    assert np.array_equal(out.image[ys, xs], real[ys - ty + sy, xs - tx + sx])  # the pixels came from the source


@pytest.mark.parametrize("name", ["jpeg", "blur", "resample"])
def test_perturb_changes_only_the_region(name):
    real = _photo(3)
    out = perturb(real, np.random.default_rng(4), perturbation=name)
    mask = out.mask.astype(bool)
    assert np.array_equal(out.image[~mask], real[~mask])
    assert _changed(out.image, real)[mask].mean() > 0.5
    assert out.detail["perturbation"] == name and out.generated_fraction == 0.0


def test_manipulations_repeat_with_the_seed_and_differ_without_it():
    real, donor = _photo(0), _photo(1)
    for kind in ("copy_move", "splice", "perturb"):
        a = manipulate(real, kind, np.random.default_rng(11), donor=donor)
        b = manipulate(real, kind, np.random.default_rng(11), donor=donor)
        c = manipulate(real, kind, np.random.default_rng(12), donor=donor)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.detail == b.detail
        assert not np.array_equal(a.mask, c.mask)


def test_global_perturbation_keeps_the_mask_and_touches_everything():
    out = splice(_photo(0), _photo(1), np.random.default_rng(5))
    after = global_perturbation(out, np.random.default_rng(0), "blur")
    assert np.array_equal(after.mask, out.mask) and after.detail["global"]["perturbation"] == "blur"
    assert _changed(after.image, out.image)[~out.mask.astype(bool)].mean() > 0.5


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        copy_move(np.zeros((16, 16, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="donor"):
        manipulate(_photo(), "splice", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown manipulation"):
        manipulate(_photo(), "warp", np.random.default_rng(0))
    with pytest.raises(ConfigError, match="area"):
        ManipulateConfig(area=(0.5, 0.2))


def test_mask_png_round_trip():
    mask = region_masks(1, 30, 20, np.random.default_rng(0))[0].astype(np.uint8)
    data = encode_mask(mask)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "L" and im.size == (20, 30) and set(np.unique(np.asarray(im))) <= {0, 255}
    assert np.array_equal(decode_mask(data), mask)


def _png(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _input_shards(folder):
    with ShardWriter(folder, "sd14") as w:
        for i in range(6):
            for label in ("real", "fake"):
                w.write(Sample(key=f"img{i}-{label}", image=_png(_photo(10 * i + (label == "fake"))), image_ext="png",
                               label=label, subset="sd14", content_id=f"photo{i}", split="train" if i < 4 else "test",
                               source="unit"))
    return folder


def test_manipulated_shards_round_trip_with_their_masks(tmp_path):
    src = _input_shards(tmp_path / "in")
    cfg = ManipulateConfig(per_image=2, seed=1, include_reals=True)
    summary = build_manipulated_shards(str(src), str(tmp_path / "out"), cfg)
    assert summary["counts"]["fake"] == 12 and summary["counts"]["real"] == 6
    assert summary["shards"] == ["manip-sd14-000000-000000.tar"]
    (url,) = list_shards(str(tmp_path / "out"))
    masks = read_masks(url)
    seen_kinds = set()
    for key, parts in group_samples(iter_tar_members(open(url, "rb").read())):
        meta, image_bytes = parse_sample(parts)
        image = np.asarray(Image.open(io.BytesIO(image_bytes)))
        mask = masks[key]
        assert mask.shape == image.shape[:2] and set(parts) == {"png", "mask.png", "json"}
        assert meta["fake_fraction"] == pytest.approx(mask.mean(), abs=1e-6)
        if meta["label"] == "real":
            assert mask.sum() == 0 and meta["subset"] == "sd14"
            continue
        seen_kinds.add(meta["manipulation"])
        assert 0.08 <= meta["fake_fraction"] <= 0.55
        original = _photo(10 * int(meta["original_key"][3]))
        assert np.array_equal(image[mask == 0], original[mask == 0])
        assert meta["content_id"] == f"photo{meta['original_key'][3]}"
        if meta["manipulation"] == "splice":
            assert meta["subset"] == "splice-sd14" and meta["family"] == "sd14"
            donor_photo = int(meta["donor_key"][3])
            assert (donor_photo < 4) == (meta["split"] == "train")  # donors never cross splits
            assert meta["generated_fraction"] == meta["fake_fraction"]
        else:
            assert meta["subset"] == meta["manipulation"] and meta["generated_fraction"] == 0.0
    assert seen_kinds == {"copy_move", "splice", "perturb"}
    again = build_manipulated_shards(str(src), str(tmp_path / "again"), cfg)
    assert again == summary
    digest = [hashlib.sha256(open(u, "rb").read()).hexdigest() for u in (url, list_shards(str(tmp_path / "again"))[0])]
    assert digest[0] == digest[1]


def test_a_rerun_with_reuse_keeps_shards_of_the_same_stamp_and_remakes_changed_ones(tmp_path):
    src, out = _input_shards(tmp_path / "in"), str(tmp_path / "out")
    cfg = ManipulateConfig(per_image=1, seed=1)
    first = build_manipulated_shards(str(src), out, cfg)
    (url,) = list_shards(out)
    written = os.stat(url).st_mtime_ns
    assert build_manipulated_shards(str(src), out, cfg, reuse=True) == first and os.stat(url).st_mtime_ns == written
    assert first["stamp"]["inputs"] == {"sd14-000000.tar": os.path.getsize(src / "sd14-000000.tar")}
    other = build_manipulated_shards(str(src), out, ManipulateConfig(per_image=2, seed=1), reuse=True)
    assert other["counts"]["fake"] == 2 * first["counts"]["fake"] and os.stat(url).st_mtime_ns != written
    assert json.loads((tmp_path / "out" / "manipulated_summary.json").read_text()) == other


def test_manipulation_step_refuses_unknown_kinds_and_inputs_without_reals(tmp_path):
    src = _input_shards(tmp_path / "in")
    with pytest.raises(GendetError, match="unknown"):
        build_manipulated_shards(str(src), str(tmp_path / "o"), ManipulateConfig(kinds=("warp",)))
    with ShardWriter(tmp_path / "fakes", "f") as w:
        w.write(Sample(key="a", image=_png(_photo()), image_ext="png", label="fake", subset="x"))
    with pytest.raises(GendetError, match="no real images"):
        build_manipulated_shards(str(tmp_path / "fakes"), str(tmp_path / "o2"), ManipulateConfig())


def test_a_sample_may_not_shadow_its_image_or_json(tmp_path):
    with pytest.raises(ValueError, match="extra member"):
        with ShardWriter(tmp_path, "x") as w:
            w.write(Sample(key="a", image=_png(_photo()), image_ext="png", label="real", subset="s",
                           files={"json": b"{}"}))
    assert json.loads("{}") == {}
