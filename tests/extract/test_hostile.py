"""Nothing poisons a run: hostile samples (JSON nested 200k deep, 5,000-digit numbers, NaN, a header
claiming 84 MP, formats gendet does not open, mutated images of every allowed format) are each
quarantined with a reason, and every good sample, and every shard after them, is extracted."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
from PIL import Image

from gendet.data import decode
from gendet.data.decode import BadImage, decode_image
from gendet.extract.config import ExtractConfig
from gendet.extract.runner import run_local
from gendet.features.store import feature_files, resolve_variant
from helpers.bad_shards import ALLOWED_FORMATS, image_bytes, mutations, write_good_shards, write_hostile_shard


def _quarantine(store: str) -> dict[str, str]:
    url = resolve_variant(store).url
    out = {}
    for table in (pq.read_table(f) for f in __import__("glob").glob(f"{url}/*.quarantine.parquet")):
        out.update(zip(table["key"].to_pylist(), table["reason"].to_pylist()))
    return out


def test_a_hostile_shard_is_quarantined_sample_by_sample_and_the_run_goes_on(tmp_path):
    folder, store = tmp_path / "shards", str(tmp_path / "store")
    write_good_shards(str(folder), "a", n_shards=1, per_shard=4)
    expected = write_hostile_shard(str(folder / "b-000000.tar"), per_format=25)
    after = write_good_shards(str(folder), "c", n_shards=2, per_shard=4)  # sorted after the hostile one
    summary = run_local(ExtractConfig(shards=str(folder), features=store, encoder="spectrum:v1", decode_workers=0))
    assert summary["shards_failed"] == {} and summary["shards_done"] == 4
    quarantined = _quarantine(store)
    for key, reason in expected.items():
        assert quarantined.get(key, "") == reason, key
    kept = {k for f in feature_files(resolve_variant(store).url) for k in pq.read_table(f, columns=["key"])["key"].to_pylist()}
    assert {k for k, r in expected.items() if not r} <= kept and {r["key"] for r in after} <= kept
    mutated = [k for k in (*kept, *quarantined) if k.startswith("mut_")]
    assert len(mutated) == 25 * len(ALLOWED_FORMATS)  # every mutation is either a feature row or quarantined
    assert set(quarantined.values()) <= {"invalid_json", "too_large", "not_an_image", "corrupt_image", "truncated_image",
                                         "decompression_bomb", "empty_image"}


@pytest.mark.parametrize("fmt", ALLOWED_FORMATS)
def test_fuzz_every_allowed_format_decodes_or_is_a_bad_image(fmt):
    """Random mutations of an image of every allowed format: each one decodes to RGB or raises
    BadImage with a reason; nothing else escapes."""
    source = image_bytes(5, (40, 32), mode="P" if fmt == "GIF" else "RGB", fmt=fmt)
    for data in mutations(source, 150, seed=ALLOWED_FORMATS.index(fmt)):
        try:
            image = decode_image(data)
        except BadImage as bad:
            assert bad.reason in {"not_an_image", "corrupt_image", "truncated_image", "too_large", "decompression_bomb",
                                  "empty_image"}
        else:
            assert image.mode == "RGB" and image.width * image.height <= decode.MAX_PIXELS


def test_the_format_allow_list_and_the_pixel_cap_can_be_set(monkeypatch):
    tga = image_bytes(1, (16, 16), fmt="TGA")
    with pytest.raises(BadImage, match="not_an_image"):
        decode_image(tga)
    monkeypatch.setenv("GENDET_IMAGE_FORMATS", "PNG,TGA")
    assert decode_image(tga).size == (16, 16)
    with pytest.raises(BadImage, match="not_an_image"):
        decode_image(image_bytes(1, (16, 16), fmt="JPEG"))  # not in the list now
    monkeypatch.setenv("GENDET_MAX_PIXELS", "200")
    with pytest.raises(BadImage, match="too_large: 16x16 pixels"):
        decode_image(image_bytes(1, (16, 16)))
    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, format="PNG")
    assert decode_image(buf.getvalue()).size == (10, 10)
