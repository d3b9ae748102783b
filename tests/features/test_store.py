"""Feature-store layout: variants side by side, chosen by encoder and degradation."""

import pyarrow as pa
import pytest

from gendet import GendetError
from gendet import io as gio
from gendet.features.store import MANIFEST, feature_schema, list_variants, resolve_variant, variant_name


def _manifest(root, encoder, phash, degrade, dim):
    url = gio.join(str(root), variant_name(encoder, phash, degrade))
    gio.write_json_atomic(gio.join(url, MANIFEST), {"encoder": encoder, "preprocess_hash": phash,
                                                    "degrade": degrade, "dim": dim, "shards": ["a"]})
    return url


def test_schema_has_contract_columns():
    schema = feature_schema(7, "float16")
    assert schema.names == ["key", "shard", "label", "subset", "content_id", "split", "encoder",
                            "preprocess_hash", "degrade", "feature"]
    assert schema.field("feature").type == pa.list_(pa.float16(), 7)


def test_variants_are_side_by_side_and_resolved(tmp_path):
    name = variant_name("open_clip:ViT-L-14/openai", "abcdef0123456789", "jpeg:65")
    assert name == "open-clip-ViT-L-14-openai__abcdef0123__jpeg65"
    clean = _manifest(tmp_path, "spectrum:v1", "1" * 64, "", 256)
    _manifest(tmp_path, "spectrum:v1", "1" * 64, "jpeg:65", 256)
    assert len(list_variants(str(tmp_path))) == 2
    assert resolve_variant(str(tmp_path)).url == clean
    assert resolve_variant(str(tmp_path), degrade="jpeg:65").degrade == "jpeg:65"
    _manifest(tmp_path, "open_clip:ViT-B-32/none", "2" * 64, "", 512)
    with pytest.raises(GendetError, match="several variants"):
        resolve_variant(str(tmp_path))
    assert resolve_variant(str(tmp_path), encoder="open_clip:ViT-B-32/none").dim == 512
    with pytest.raises(GendetError, match="no variant"):
        resolve_variant(str(tmp_path), degrade="blur:3")
    with pytest.raises(GendetError, match="gendet extract"):
        resolve_variant(str(tmp_path / "nothing"))
