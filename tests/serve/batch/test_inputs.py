"""What ``gendet score`` reads: sources listed as items, partitions read into pixels, bad ones as rows."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from gendet import GendetError
from gendet.serve.batch.inputs import PartReader, item_parts, list_source, source_kind
from helpers.bad_shards import raw_tar


def tar_of(members: dict[str, bytes], *, cut: int | None = None) -> bytes:
    data = raw_tar(list(members.items()))
    return data[:cut] if cut else data


def test_sources_are_told_apart_and_listed_with_the_users_ids(tmp_path, tiny_images):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    shutil.copy(tiny_images[0], tmp_path / "imgs" / "a.jpg")
    shutil.copy(tiny_images[1], tmp_path / "imgs" / "sub" / "b.png")
    (tmp_path / "imgs" / "notes.txt").write_text("skipped")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "x-000000.tar").write_bytes(tar_of({"k.jpg": tiny_images[0].read_bytes()}))
    assert source_kind(str(tmp_path / "imgs")) == "images" and source_kind(str(tmp_path / "shards")) == "shards"
    assert source_kind(str(tmp_path / "m.csv")) == "manifest" and source_kind(str(tmp_path / "imgs"), "shards") == "shards"
    kind, ids, urls = list_source(str(tmp_path / "imgs"), "auto")
    assert (kind, ids) == ("images", ["a.jpg", "sub/b.png"]) and urls[1] == str(tmp_path / "imgs" / "sub" / "b.png")
    assert list_source(str(tmp_path / "shards"), "auto")[1] == ["x-000000"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path\nupload-7,imgs/a.jpg\nupload-9,/abs/elsewhere.png\n")
    kind, ids, urls = list_source(str(manifest), "auto")
    assert ids == ["upload-7", "upload-9"] and urls == [str(tmp_path / "imgs" / "a.jpg"), "/abs/elsewhere.png"]


@pytest.mark.parametrize("text, needle", [
    ("name,file\nx,a.jpg\n", r"give a column 'path' \(or 'url'\)"),
    ("id,path\n1,a.jpg\n1,b.jpg\n", "id '1' appears more than once"),
])
def test_a_bad_manifest_is_one_line_naming_the_fix(tmp_path, text, needle):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(GendetError, match=needle) as err:
        list_source(str(tmp_path / "m.csv"), "auto")
    assert "\n" not in str(err.value) and "m.csv" in str(err.value)


def test_an_empty_folder_is_refused_before_any_work(tmp_path):
    with pytest.raises(GendetError, match="no image files found"):
        list_source(str(tmp_path), "images")


def test_partitions_are_named_by_their_ids_so_a_rerun_rebuilds_the_same_ones():
    ids = [f"i{k}" for k in range(5)]
    parts = item_parts(ids[::-1], [f"/u/{i}" for i in ids[::-1]], 2)
    assert [p.ids for p in parts] == [("i0", "i1"), ("i2", "i3"), ("i4",)]
    assert parts[0].urls == ("/u/i0", "/u/i1")
    assert [p.name for p in item_parts(ids, ids, 2)] == [p.name for p in parts]
    assert item_parts(ids[1:], ids[1:], 2)[0].name != parts[0].name


def test_a_shard_is_read_labels_optional_and_every_bad_sample_is_a_row(tmp_path, tiny_images):
    good = tiny_images[0].read_bytes()
    members = {"a.jpg": good, "a.json": b'{"label": "fake"}', "b.png": tiny_images[1].read_bytes(),
               "c.jpg": b"not a jpeg", "d.txt": b"no image here", "e.jpg": good}
    whole, cut = tmp_path / "s-000000.tar", tmp_path / "s-000001.tar"
    whole.write_bytes(tar_of(members))
    cut.write_bytes(tar_of(members, cut=2048))  # cut inside the second sample
    reader = PartReader("spectrum:v1")
    rows = reader.read({"name": "s-000000", "shard": str(whole), "ids": [], "urls": []})
    assert list(rows["id"]) == ["a", "b", "c", "d", "e"] and list(rows["label"]) == ["fake", "", "", "", ""]
    assert list(rows["n_in_part"]) == [5] * 5 and list(rows["index"]) == list(range(5))
    assert rows["error"][0] == rows["error"][1] == rows["error"][4] == ""
    assert rows["error"][2].startswith("not_an_image") and rows["error"][3].startswith("no_image")
    assert rows["pixels"].dtype == np.uint8 and not rows["pixels"][2].any() and rows["pixels"][0].any()
    assert (rows["width"][0], rows["height"][0]) == (56, 40)
    broken = reader.read({"name": "s-000001", "shard": str(cut), "ids": [], "urls": []})
    assert broken["id"][-1] == "s-000001/" and broken["error"][-1].startswith("incomplete_shard")
    empty = tmp_path / "s-000002.tar"
    empty.write_bytes(tar_of({}))
    rows = reader.read({"name": "s-000002", "shard": str(empty), "ids": [], "urls": []})
    assert list(rows["error"]) == ["empty_shard: the shard holds no samples"]  # a row, so the shard is never lost
