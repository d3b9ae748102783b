"""The sample format and deterministic shard writing (gendet/data/shards.py)."""

import hashlib
import io
import json
import tarfile

import pytest
from PIL import Image

from gendet import GendetError
from gendet.data.shards import Sample, ShardWriter, export_samples, list_shards, meta_problem, sanitize_key, shard_stem, tar_bytes


def _png(color=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _samples(n):
    return [Sample(key=f"s{i:03d}", image=_png((i, 0, 0)), image_ext="png", label="real" if i % 2 else "fake",
                   subset="sd14", content_id=f"photo{i // 2}", split="train", source="test") for i in range(n)]


@pytest.mark.parametrize("meta,reason", [
    ({"label": "real", "subset": "a"}, None),
    ({"subset": "a"}, "missing_label"),
    ({"label": "maybe", "subset": "a"}, "unknown_label"),
    ({"label": "fake"}, "missing_subset"),
    ({"label": "fake", "subset": ""}, "missing_subset"),
    ({"label": "fake", "subset": "a", "split": "holdout"}, "unknown_split"),
    (["not", "a", "dict"], "json_not_object"),
])
def test_meta_problem_names_the_reason(meta, reason):
    assert meta_problem(meta) == reason


def test_same_samples_give_byte_identical_shards(tmp_path):
    a = ShardWriter(tmp_path / "a", "sd14-train", max_count=3)
    b = ShardWriter(tmp_path / "b", "sd14-train", max_count=3)
    for s in _samples(7):
        a.write(s)
        b.write(s)
    wa, wb = a.close(), b.close()
    assert [shard_stem(u) for u in wa] == ["sd14-train-000000", "sd14-train-000001", "sd14-train-000002"]
    digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
    assert [digest(p) for p in wa] == [digest(p) for p in wb]


def test_shard_members_keep_image_bytes_and_meta(tmp_path):
    samples = _samples(2)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(samples))) as tar:
        names = tar.getnames()
        # webdataset's TarWriter writes a sample's members together, sorted by extension
        assert names == ["s000.json", "s000.png", "s001.json", "s001.png"]
        assert tar.extractfile("s001.png").read() == samples[1].image
        meta = json.loads(tar.extractfile("s001.json").read())
    assert meta == {"label": "real", "subset": "sd14", "content_id": "photo0", "split": "train", "source": "test"}


def test_invalid_samples_are_refused_at_write():
    bad = Sample(key="a.b", image=b"x", image_ext="png", label="real", subset="s")
    with pytest.raises(ValueError, match="key"):
        tar_bytes([bad])
    with pytest.raises(ValueError, match="duplicate"):
        tar_bytes(_samples(1) * 2)
    assert sanitize_key("ADM/val/ai/img 001.PNG") == "ADM_val_ai_img_001_PNG"


def test_list_shards_dir_pattern_and_errors(tmp_path):
    with ShardWriter(tmp_path / "s", "x", max_count=1) as w:
        for s in _samples(3):
            w.write(s)
    d = str(tmp_path / "s")
    assert [shard_stem(u) for u in list_shards(d)] == ["x-000000", "x-000001", "x-000002"]
    assert len(list_shards(d + "/x-{000000..000001}.tar")) == 2
    assert len(list_shards(d + "/*.tar")) == 3
    with pytest.raises(GendetError, match="not found"):
        list_shards(str(tmp_path / "missing"))
    with pytest.raises(GendetError, match="shard not found"):
        list_shards(d + "/nope.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GendetError, match="no .tar shards"):
        list_shards(str(tmp_path / "empty"))
    # Two shards with one stem would overwrite each other's per-shard outputs.
    (tmp_path / "s" / "sub").mkdir()
    (tmp_path / "s" / "sub" / "x-000000.tar").write_bytes(b"")
    with pytest.raises(GendetError, match="same shard name"):
        list_shards(d)


def test_export_samples_writes_a_few_files_of_each_label(tmp_path):
    reals = [Sample(key=f"r{i}", image=b"R%d" % i, image_ext="png", label="real", subset="s", split="test")
             for i in range(4)]
    fakes = [Sample(key=f"f{i}", image=b"F%d" % i, image_ext="jpg", label="fake", subset="s",
                    split="test" if i else "train") for i in range(4)]
    shard = tmp_path / "s-000000.tar"
    shard.write_bytes(tar_bytes(reals + fakes))
    paths = export_samples([str(shard)], str(tmp_path / "out"), per_label=2)
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    assert names == ["fake-f1.jpg", "fake-f2.jpg", "real-r0.png", "real-r1.png"]  # f0 is train: skipped
    assert (tmp_path / "out" / "fake-f1.jpg").read_bytes() == b"F1"


@pytest.mark.parametrize(("key", "problem"), [
    ("../x", "'..' in the path"), ("a/../../x", "'..' in the path"), ("/etc/passwd", "absolute path"),
    ("C:/x", "absolute path"), ("a/b..c", ""), ("sub/dir/key", ""), ("..hidden", ""),
])
def test_key_problem_names_keys_that_would_leave_a_folder(key, problem):
    from gendet.data.shards import key_problem

    assert key_problem(key) == problem
