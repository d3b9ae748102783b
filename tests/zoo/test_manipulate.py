"""Inpainting with a zoo generator and `gendet zoo OUT --manipulate SHARDS` (gendet/zoo/manipulate.py)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from gendet.data.manipulation_shards import read_masks
from gendet.data.shards import Sample, ShardWriter, group_samples, iter_tar_members, list_shards, parse_sample
from gendet.zoo.manipulate import inpaint_maker
from pipelines import cli


def _textured(seed, shape=(44, 60)):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (shape[0] // 4 + 1, shape[1] // 4 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(base.repeat(4, 0).repeat(4, 1)[:shape[0], :shape[1]])


def test_inpaint_regenerates_only_the_region_with_the_shipped_family():
    make = inpaint_maker(("inpaint_f8",))
    image = _textured(0)  # 44 x 60: not multiples of 8, padded for the generator and cropped back
    out = make(image, np.random.default_rng(3))
    mask = out.mask.astype(bool)
    assert out.image.shape == image.shape and out.kind == "inpaint" and out.detail == {"family": "inpaint_f8"}
    assert np.array_equal(out.image[~mask], image[~mask])
    assert (out.image != image).any(-1)[mask].mean() > 0.5
    assert out.generated_fraction == out.fraction == pytest.approx(mask.mean(), abs=1e-6)
    again = make(image, np.random.default_rng(3))
    assert np.array_equal(again.image, out.image)


def _png(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_the_zoo_verb_writes_manipulated_shards_with_masks(tmp_path, capsys):
    with ShardWriter(tmp_path / "in", "photos") as w:
        for i in range(3):
            w.write(Sample(key=f"p{i}", image=_png(_textured(i, (48, 48))), image_ext="png", label="real", subset="x",
                           split="train", content_id=f"c{i}"))
    out = tmp_path / "out"
    assert cli.main(["zoo", str(out), "--manipulate", str(tmp_path / "in"), "--kinds", "inpaint,copy_move",
                     "--per-image", "2", "--seed", "4"]) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["fake"] == 6 and counts["inpaint"] + counts["copy_move"] == 6 and counts["inpaint"] > 0
    (url,) = list_shards(str(out))
    masks = read_masks(url)
    subsets = set()
    for key, parts in group_samples(iter_tar_members(open(url, "rb").read())):
        meta, _ = parse_sample(parts)
        subsets.add(meta["subset"])
        assert meta["label"] == "fake" and masks[key].shape == (48, 48)
        assert meta["fake_fraction"] == pytest.approx(masks[key].mean(), abs=1e-6)
    assert subsets <= {"inpaint-inpaint_f8", "copy_move"} and "inpaint-inpaint_f8" in subsets
    assert cli.main(["zoo", str(tmp_path / "o2"), "--manipulate", str(tmp_path / "in"), "--kinds", "warp"]) == 2
    assert "unknown" in capsys.readouterr().err
