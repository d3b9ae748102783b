"""Importers: tiny GenImage / UFD / plain-folder trees of real images -> shards, read back."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gendet import GendetError
from gendet.data.importers import import_folder, import_genimage, import_ufd
from gendet.data.shards import iter_tar_members, list_shards
from pipelines.cli import main as gendet_main


def _image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (24, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _read_samples(out: Path) -> dict[str, dict]:
    """"<shard>/<key>" -> {"json": meta, "ext": image extension, "image": bytes, "shard": name, "key": key}."""
    samples: dict[str, dict] = {}
    for url in list_shards(str(out)):
        for name, data in iter_tar_members(Path(url).read_bytes()):
            key, ext = name.rsplit(".", 1)
            entry = samples.setdefault(f"{Path(url).name}/{key}", {"shard": Path(url).name, "key": key})
            if ext == "json":
                entry["json"] = json.loads(data)
            else:
                entry["ext"], entry["image"] = ext, data
    return samples


@pytest.fixture
def genimage_root(tmp_path) -> Path:
    root = tmp_path / "genimage"
    for s, subset in enumerate(["imagenet_ai_0419_sdv4", "Midjourney"]):
        for split in ("train", "val"):
            for i in range(3):
                _write(root / subset / split / "ai" / f"{i}_{subset[:4]}_{i:05d}.png", _image_bytes(100 * s + i))
                # the same ImageNet photo appears under both generators (GenImage samples reals per subset)
                _write(root / subset / split / "nature" / f"n0144_{split}_{i}.JPEG", _image_bytes(7 + i, "JPEG"))
    _write(root / "Midjourney" / "train" / "ai" / "looks_like.png", _image_bytes(50, "JPEG"))  # JPEG bytes, .png name
    _write(root / "Midjourney" / "train" / "ai" / "notes.txt", b"not an image")
    _write(root / "Midjourney" / "train" / "ai" / "empty.png", b"")
    _write(root / "Midjourney" / "train" / "nature" / "anim.gif", _image_bytes(3, "GIF"))
    _write(root / "README.md", b"# GenImage")
    _write(root / "Midjourney" / ".DS_Store", b"\x00\x01")
    return root


def test_genimage_import_labels_subsets_content_ids(genimage_root, tmp_path):
    out = tmp_path / "shards"
    summary = import_genimage(str(genimage_root), str(out), shard_size=2, names="folder")  # 0.8's names
    samples = _read_samples(out)
    assert summary["written"] == len(samples) == 2 * 2 * 6 + 1
    assert summary["skipped"] == {"empty_file": 1, "not_an_image": 1, "outside_layout": 1, "unsupported_image_format": 1}
    assert summary["subsets"] == {"Midjourney": {"real": 6, "fake": 7}, "imagenet_ai_0419_sdv4": {"real": 6, "fake": 6}}
    assert json.loads((out / "import_summary-genimage.json").read_text()) == summary
    assert {s["shard"].rsplit("-", 1)[0] for s in samples.values()} == {
        "Midjourney-train", "Midjourney-val", "imagenet_ai_0419_sdv4-train", "imagenet_ai_0419_sdv4-val"}
    for s in samples.values():
        meta = s["json"]
        source_rel = meta["source"].split(":", 1)[1]
        assert s["image"] == (genimage_root / source_rel).read_bytes()  # bytes kept as they are
        subset, split, label_dir, _ = source_rel.split("/")
        assert (meta["subset"], meta["split"]) == (subset, split)
        assert meta["label"] == {"ai": "fake", "nature": "real"}[label_dir]
        assert s["shard"].startswith(f"{subset}-{split}-")
    by_source = {s["json"]["source"]: s for s in samples.values()}
    assert by_source["genimage:Midjourney/train/ai/looks_like.png"]["ext"] == "jpg"  # type from magic bytes
    real_a = by_source["genimage:Midjourney/val/nature/n0144_val_1.JPEG"]["json"]["content_id"]
    real_b = by_source["genimage:imagenet_ai_0419_sdv4/val/nature/n0144_val_1.JPEG"]["json"]["content_id"]
    assert real_a == real_b == "imagenet:n0144_val_1"
    fake = by_source["genimage:Midjourney/val/ai/1_Midj_00001.png"]["json"]["content_id"]
    assert fake == "genimage:Midjourney/val/1_Midj_00001"
    # shard size 2, fakes and reals interleaved: every full shard of a (subset, split) holds both labels
    per_shard: dict[str, list[str]] = {}
    for s in samples.values():
        per_shard.setdefault(s["shard"], []).append(s["json"]["label"])
    assert max(len(v) for v in per_shard.values()) == 2
    assert sum(sorted(v) == ["fake", "real"] for v in per_shard.values()) >= 10


def test_genimage_as_distributed_two_levels_canonical_names_and_a_choice_of_generators(tmp_path, capsys):
    """GenImage's own tree, GenImage/<generator>/<imagenet_ai_...>/{train,val}/{ai,nature}: one command
    for the whole dataset, each subset under the paper's name, or only the generators asked for."""
    root = tmp_path / "GenImage"
    for generator, subset in (("stable_diffusion_v_1_4", "imagenet_ai_0419_sdv4"), ("Midjourney", "imagenet_midjourney"),
                              ("new_model", "imagenet_new_model"), ("BigGAN", "some_other_name")):
        for split in ("train", "val"):
            _write(root / generator / subset / split / "ai" / f"{generator}_0.png", _image_bytes(1))
            _write(root / generator / subset / split / "nature" / "n0144_1.JPEG", _image_bytes(2, "JPEG"))
    summary = import_genimage(str(root), str(tmp_path / "all"), shard_size=100)
    assert summary["subsets"] == {s: {"real": 2, "fake": 2} for s in ("sdv14", "midjourney", "imagenet_new_model", "biggan")}
    samples = _read_samples(tmp_path / "all")
    metas = {s["json"]["source"]: s["json"] for s in samples.values()}
    assert metas["genimage:stable_diffusion_v_1_4/imagenet_ai_0419_sdv4/val/ai/stable_diffusion_v_1_4_0.png"]["subset"] == "sdv14"
    # the same ImageNet photo is one content group under every generator, whichever layout
    assert len({m["content_id"] for m in metas.values() if m["label"] == "real"}) == 1
    assert gendet_main(["import", "genimage", str(root), str(tmp_path / "two"), "--generators",
                        "sdv14,imagenet_midjourney", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["subsets"]) == {"sdv14", "midjourney"}
    one = import_genimage(str(root / "stable_diffusion_v_1_4"), str(tmp_path / "one"))  # one generator's folder
    assert set(one["subsets"]) == {"sdv14"}
    with pytest.raises(GendetError, match="no generator dalle3 here .*found biggan, imagenet_new_model, midjourney, sdv14"):
        import_genimage(str(root), str(tmp_path / "none"), generators=("dalle3",))


def test_genimage_val_fraction_carves_val_from_train_and_names_genimage_val_test(genimage_root, tmp_path):
    from gendet.data.importers.genimage import carved_to_val

    out = tmp_path / "shards"
    summary = import_genimage(str(genimage_root), str(out), shard_size=100, val_fraction=0.5)
    samples = _read_samples(out)
    assert summary["written"] == len(samples) == 2 * 2 * 6 + 1  # nothing lost, nothing added
    by_split: dict[str, set] = {}
    for s in samples.values():
        meta = s["json"]
        folder = meta["source"].split(":", 1)[1].split("/")[1]
        assert s["shard"].startswith(f"{meta['subset']}-{meta['split']}-")
        if folder == "val":  # GenImage's val is what runs report: test
            assert meta["split"] == "test"
        else:  # train's groups by the hash of their content_id, the same under every generator
            assert meta["split"] == ("val" if carved_to_val(meta["content_id"], 0.5) else "train")
        by_split.setdefault(meta["split"], set()).add(meta["content_id"])
    assert set(by_split) == {"train", "val", "test"} and not by_split["train"] & by_split["val"]
    with pytest.raises(GendetError, match=r"--val-fraction 1.0: must be in \[0, 1\)"):
        import_genimage(str(genimage_root), str(tmp_path / "x"), val_fraction=1.0)


def test_same_input_gives_byte_identical_shards(genimage_root, tmp_path):
    digests = []
    for name in ("a", "b"):
        import_genimage(str(genimage_root), str(tmp_path / name), shard_size=4)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / name).glob("*.tar")})
    assert digests[0] == digests[1] and len(digests[0]) >= 4


def test_webdataset_reads_the_shards(genimage_root, tmp_path):
    import webdataset as wds

    import_genimage(str(genimage_root), str(tmp_path / "out"), shard_size=100)
    urls = list_shards(str(tmp_path / "out"))
    rows = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg;png;webp", "json"))
    assert len(rows) == 25 and all(img.size == (24, 16) for _, img, _ in rows)


def test_existing_shards_refused_unless_overwrite(genimage_root, tmp_path):
    out = tmp_path / "out"
    import_genimage(str(genimage_root), str(out), shard_size=2)
    with pytest.raises(GendetError, match="already holds shards .*--overwrite"):
        import_genimage(str(genimage_root), str(out), shard_size=100)
    import_genimage(str(genimage_root), str(out), shard_size=100, overwrite=True)
    assert len(list(out.glob("*.tar"))) == 4  # the smaller, older shards are gone


@pytest.mark.parametrize("layout, make, fragment", [
    ("genimage", lambda r: _write(r / "train" / "ai" / "x.png", _image_bytes(0)), "looks like one subset"),
    ("genimage", lambda r: _write(r / "sd" / "test" / "fake" / "x.png", _image_bytes(0)),
     "expected ROOT/<generator>/<subset>/{train,val}/{ai,nature}"),
    ("ufd", lambda r: _write(r / "0_real" / "x.png", _image_bytes(0)), "looks like one subset"),
    ("ufd", lambda r: _write(r / "progan" / "real" / "x.png", _image_bytes(0)),
     "expected ROOT/<subset>/[<class>/]{0_real,1_fake}"),
])
def test_wrong_layout_is_one_clear_error_and_writes_nothing(tmp_path, capsys, layout, make, fragment):
    root, out = tmp_path / "root", tmp_path / "out"
    make(root)
    assert gendet_main(["import", layout, str(root), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gendet: error: {root}: no ") and fragment in err and "\n" not in err
    assert not out.exists()


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(GendetError, match="not a directory"):
        import_genimage(str(tmp_path / "nope"), str(tmp_path / "out"))


def test_ufd_with_and_without_classes(tmp_path):
    root = tmp_path / "test"  # the split comes from ROOT's name
    for cls in ("airplane", "cat"):
        for i in range(2):
            _write(root / "progan" / cls / "0_real" / f"{i:03d}.png", _image_bytes(i))
            _write(root / "progan" / cls / "1_fake" / f"{i:03d}.png", _image_bytes(10 + i))
    for i in range(3):
        _write(root / "dalle" / "0_real" / f"{i}.jpg", _image_bytes(20 + i, "JPEG"))
        _write(root / "dalle" / "1_fake" / f"{i}.png", _image_bytes(30 + i))
    _write(root / "dalle" / "1_fake" / "bad.png", b"<html>not found</html>")
    summary = import_ufd(str(root), str(tmp_path / "out"), shard_size=3)
    samples = _read_samples(tmp_path / "out")
    assert summary["subsets"] == {"dalle": {"real": 3, "fake": 3}, "progan": {"real": 4, "fake": 4}}
    assert summary["skipped"] == {"not_an_image": 1}
    metas = {s["json"]["source"]: s["json"] for s in samples.values()}
    cat = metas["ufd:progan/cat/1_fake/001.png"]
    assert (cat["label"], cat["subset"], cat["split"], cat["class"]) == ("fake", "progan", "test", "cat")
    assert cat["content_id"] == "ufd:test/progan/cat/1_fake/001"
    dalle = metas["ufd:dalle/0_real/2.jpg"]
    assert dalle["label"] == "real" and "class" not in dalle and dalle["split"] == "test"
    assert {s["shard"] for s in samples.values()} == {
        "dalle-test-000000.tar", "dalle-test-000001.tar", "progan-test-000000.tar", "progan-test-000001.tar",
        "progan-test-000002.tar"}


def test_folder_import_through_the_cli(tmp_path, capsys):
    reals, fakes, out = tmp_path / "reals", tmp_path / "fakes", tmp_path / "out"
    for i in range(3):
        _write(reals / "sub" / f"photo {i}.jpg", _image_bytes(i, "JPEG"))
        _write(fakes / f"gen_{i}.webp", _image_bytes(40 + i, "WEBP"))
    long_name = "x" * 140 + ".png"  # longer than a tar name can hold: the key is shortened
    _write(fakes / long_name, _image_bytes(99))
    assert gendet_main(["import", "folder", str(reals), str(out), "--label", "real", "--subset", "my gen"]) == 0
    assert gendet_main(["import", "folder", str(fakes), str(out), "--label", "fake", "--subset", "my gen",
                        "--split", "test", "--shard-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 images in 1 shards" in printed and "wrote 4 images in 2 shards" in printed
    samples = _read_samples(out)
    assert len(samples) == 7
    assert {s["shard"] for s in samples.values()} == {
        "my_gen-real-000000.tar", "my_gen-test-fake-000000.tar", "my_gen-test-fake-000001.tar"}
    labels = {s["json"]["source"].split(":", 1)[1]: (s["json"]["label"], s["ext"]) for s in samples.values()}
    assert labels["sub/photo 1.jpg"] == ("real", "jpg") and labels["gen_2.webp"] == ("fake", "webp")
    assert labels[long_name] == ("fake", "png")
    assert all(len(s["key"]) <= 90 for s in samples.values())
    assert sorted(p.name for p in out.glob("import_summary-*.json")) == [
        "import_summary-folder-my_gen-real.json", "import_summary-folder-my_gen-test-fake.json"]
    with pytest.raises(GendetError, match="--label 'maybe'"):
        import_folder(str(reals), str(out), label="maybe", subset="x")


def test_folder_import_skips_links_that_leave_the_folder(tmp_path):
    secret, folder, out = tmp_path / "secret", tmp_path / "photos", tmp_path / "out"
    _write(secret / "private.png", _image_bytes(7))
    _write(folder / "a.png", _image_bytes(1))
    _write(folder / "inside" / "b.png", _image_bytes(2))
    (folder / "escape.png").symlink_to(secret / "private.png")  # a file link out of the folder
    (folder / "escape_dir").symlink_to(secret, target_is_directory=True)  # a folder link out of it
    (folder / "alias.png").symlink_to(folder / "inside" / "b.png")  # a link that stays inside: kept
    summary = import_folder(str(folder), str(out), label="real", subset="x")
    assert summary["written"] == 3 and summary["skipped"] == {"outside_root": 2}
    assert sorted(summary["skipped_examples"]["outside_root"]) == ["escape.png", "escape_dir"]
    sources = {s["json"]["source"] for s in _read_samples(out).values()}
    assert not any("private" in src or "escape" in src for src in sources)


def test_fsspec_urls_in_and_out():
    """ROOT and OUT may be any fsspec URL (memory:// stands in for s3:// or gs://)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for i in range(3):
        fs.pipe(f"/gi/sd/val/ai/{i}.png", _image_bytes(i))
        fs.pipe(f"/gi/sd/val/nature/n{i}.png", _image_bytes(9 + i))
    summary = import_genimage("memory://gi", "memory://gi-out", shard_size=4)
    assert summary["written"] == 6 and summary["shards"] == ["sd-val-000000.tar", "sd-val-000001.tar"]
    urls = list_shards("memory://gi-out")
    members = [name for url in urls for name, _ in iter_tar_members(fs.cat_file(url.replace("memory://", "/")))]
    assert sorted(members)[:2] == ["ai_0.json", "ai_0.png"] and len(members) == 12
