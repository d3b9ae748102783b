"""Token variants (``gendet extract --tokens [--token-grid RxC]``, issue 13): on real shards with
``mask.png`` members, the store keeps each image's token grid, its mask per token (through the
encoder's geometry, as ``Encoder.token_mask`` has it) and its manipulation fields, beside the pooled
feature; incremental like any variant; pooled consumers still find their pooled variant."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from gendet import GendetError
from gendet import io as gio
from gendet.data.manipulations import MASK_MEMBER, encode_mask
from gendet.data.shards import Sample, ShardWriter
from gendet.encoders.registry import load_encoder
from gendet.encoders.tokens import coarsen, grid_fractions
from gendet.extract.config import ExtractConfig
from gendet.extract.mapper import PartWritingMapper
from gendet.extract.parts import finalize_shard
from gendet.extract.runner import prepare, run_local
from gendet.features.store import MANIFEST, STATS_SUFFIX, feature_matrix, feature_schema, resolve_variant, variant_key
from pipelines.cli import main as gendet_main

ENCODER = "spectrum:v1"  # 8 x 8 tokens of 288, pure torch: fast


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def region(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    top, left = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    mask[top : top + h // 3, left : left + w // 2] = 1
    return mask


def write_shard(folder, prefix: str, seed: int, bad_masks: bool = False) -> dict[str, dict]:
    """One shard: masked partial fakes, a whole-image fake and a real without mask, an all-zero
    masked real; with ``bad_masks`` also a mask of the wrong size and one that is not a PNG.
    Returns {key: what the store must say of it} (None: quarantined as bad_mask)."""
    rng = np.random.default_rng(seed)
    samples, expected = [], {}
    for i in range(4):
        h, w = int(rng.integers(72, 160)), int(rng.integers(72, 160))
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        key = f"{prefix}-{i}"
        if i < 2:  # a partial fake: mask and manipulation fields
            mask = region(h, w, rng)
            extra = {"manipulation": "inpaint", "family": "inpaint_f8", "generated_fraction": float(mask.mean())}
            samples.append(Sample(key=key, image=png(image), image_ext="png", label="fake", subset="inpaint-inpaint_f8",
                                  extra=extra, files={MASK_MEMBER: encode_mask(mask)}))
            expected[key] = {"mask": mask, "label": "fake", **extra, "has_mask": True}
        elif i == 2:
            samples.append(Sample(key=key, image=png(image), image_ext="png", label="fake", subset="sd"))
            expected[key] = {"mask": None, "label": "fake", "manipulation": "", "family": "", "generated_fraction": 1.0,
                             "has_mask": False}
        else:
            samples.append(Sample(key=key, image=png(image), image_ext="png", label="real", subset="sd"))
            expected[key] = {"mask": None, "label": "real", "manipulation": "", "family": "", "generated_fraction": 0.0,
                             "has_mask": False}
        expected[key]["image"] = image
    if bad_masks:
        image = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
        samples.append(Sample(key=f"{prefix}-small-mask", image=png(image), image_ext="png", label="fake", subset="x",
                              files={MASK_MEMBER: encode_mask(np.ones((40, 48), np.uint8))}))
        samples.append(Sample(key=f"{prefix}-not-png", image=png(image), image_ext="png", label="fake", subset="x",
                              files={MASK_MEMBER: b"not a png"}))
        expected[f"{prefix}-small-mask"] = expected[f"{prefix}-not-png"] = None
    with ShardWriter(str(folder), prefix=prefix) as writer:
        for s in samples:
            writer.write(s)
    return expected


@pytest.fixture()
def shards(tmp_path):
    folder = tmp_path / "shards"
    expected = {**write_shard(folder, "a", 1), **write_shard(folder, "b", 2, bad_masks=True)}
    return folder, expected


def config(folder, store, **kw) -> ExtractConfig:
    return ExtractConfig(shards=str(folder), features=str(store), encoder=ENCODER, batch_size=3, decode_workers=0, **kw)


def rows_of(variant) -> dict[str, dict]:
    tables = [pq.read_table(os.path.join(variant.url, f"{stem}.parquet")) for stem in variant.shards]
    return {r["key"]: r for t in tables for r in t.to_pylist()}


def test_token_variant_columns_masks_and_fields(shards, tmp_path):
    folder, expected = shards
    store = tmp_path / "store"
    summary = run_local(config(folder, store, tokens=True))
    assert summary["quarantined_by_reason"] == {"bad_mask": 2} and summary["images"] == 8
    variant = resolve_variant(str(store), tokens=True)
    assert (variant.token_grid, variant.token_dim) == ((8, 8), 288) and variant.url.endswith("__tok8x8")
    table = pq.read_table(os.path.join(variant.url, "b-000000.parquet"))
    assert table.schema == feature_schema(392, "float16", (8, 8), 288)
    quarantine = pq.read_table(os.path.join(variant.url, "b-000000.quarantine.parquet")).to_pylist()
    assert {q["key"]: q["reason"] for q in quarantine} == {"b-small-mask": "bad_mask", "b-not-png": "bad_mask"}

    encoder, rows = load_encoder(ENCODER), rows_of(variant)
    assert set(rows) == {k for k, v in expected.items() if v is not None}
    for key, row in rows.items():
        want = expected[key]
        assert {f: row[f] for f in ("has_mask", "manipulation", "family", "label")} == \
            {f: want[f] for f in ("has_mask", "manipulation", "family", "label")}
        assert row["generated_fraction"] == pytest.approx(want["generated_fraction"], abs=1e-6)
        mask = np.asarray(row["token_mask"], np.float32)
        if want["mask"] is not None:
            assert 0 < mask.mean() < 1
            np.testing.assert_allclose(mask, encoder.token_mask(want["mask"]), atol=2e-3)  # float16 storage
        else:
            assert set(mask.tolist()) == {1.0 if want["label"] == "fake" else 0.0}
        # one forward gives both: the tokens and the feature of the encoder on this image
        x = encoder.preprocess(Image.fromarray(want["image"]))[None]
        pooled, tokens = encoder.features_and_tokens(x)
        np.testing.assert_allclose(np.asarray(row["tokens"], np.float32).reshape(64, 288), tokens[0].numpy(),
                                   rtol=1e-2, atol=1e-2)
        np.testing.assert_allclose(np.asarray(row["feature"], np.float32), pooled[0].numpy(), rtol=1e-2, atol=1e-2)

    manifest = gio.read_json(os.path.join(variant.url, MANIFEST))
    stats = gio.read_json(os.path.join(variant.url, "a-000000" + STATS_SUFFIX))
    for recorded in (manifest, stats):
        assert (recorded["token_grid"], recorded["token_dim"], recorded["tokens"]) == ([8, 8], 288, "8x8")
    pooled_key = variant_key({k: v for k, v in manifest.items() if k != "tokens"})
    assert manifest["variant_key"] == variant_key(manifest) != pooled_key


def test_rerun_skips_done_shards_and_adds_a_new_one(shards, tmp_path):
    folder, _ = shards
    cfg = config(folder, tmp_path / "store", tokens=True)
    run_local(cfg)
    again = run_local(cfg)
    assert again["shards_done"] == 0 and again["shards_skipped"] == 2
    write_shard(folder, "c", 3)
    more = run_local(cfg)
    assert more["shards_written"] == ["c-000000"] and more["shards_skipped"] == 2 and more["images"] == 4
    variant = resolve_variant(cfg.features, tokens=True)
    assert variant.shards == ("a-000000", "b-000000", "c-000000") and variant.rows == 12
    assert len(rows_of(variant)["c-0"]["tokens"]) == 64 * 288


def test_a_store_of_0_5_tokens_keeps_growing_in_them(shards, tmp_path, monkeypatch):
    """gendet 0.5 stored 96 spectrum measurements per token; today's tokens start with them. A run
    that adds shards to such a store writes the same 96 (never a mix of widths), so the GAMMA
    models trained on it keep reading it; a fresh store gets today's 288."""
    import gendet.extract.runner as runner
    from gendet.encoders.tokens import PATCH_DIM

    folder, expected = shards
    cfg = config(folder, tmp_path / "store", tokens=True)
    monkeypatch.setattr(runner, "resolve_token_grid", lambda *a: ((8, 8), PATCH_DIM))  # what 0.5 resolved
    run_local(cfg)
    monkeypatch.undo()
    write_shard(folder, "c", 3)
    assert run_local(cfg)["shards_written"] == ["c-000000"]
    variant = resolve_variant(cfg.features, tokens=True)
    assert variant.token_dim == PATCH_DIM and gio.read_json(os.path.join(variant.url, MANIFEST))["token_dim"] == PATCH_DIM
    row = rows_of(variant)["c-0"]
    encoder = load_encoder(ENCODER)
    image = write_shard(tmp_path / "again", "c", 3)["c-0"]["image"]  # the same seed: the same pixels
    tokens = encoder.tokens(encoder.preprocess(Image.fromarray(image))[None])[0]
    np.testing.assert_allclose(np.asarray(row["tokens"], np.float32).reshape(64, PATCH_DIM), tokens[:, :PATCH_DIM].numpy(),
                               rtol=1e-2, atol=1e-2)
    fresh = run_local(config(folder, tmp_path / "fresh", tokens=True))
    assert fresh["images"] > 0 and resolve_variant(str(tmp_path / "fresh"), tokens=True).token_dim == 3 * PATCH_DIM
    manifest = os.path.join(resolve_variant(str(tmp_path / "fresh"), tokens=True).url, MANIFEST)
    gio.write_json_atomic(manifest, {**gio.read_json(manifest), "token_dim": 50})  # a width no encoder here makes
    write_shard(folder, "d", 4)
    with pytest.raises(GendetError, match="holds tokens of 50 values"):
        prepare(config(folder, tmp_path / "fresh", tokens=True))


def test_pooled_consumers_keep_their_variant_beside_a_token_one(shards, tmp_path):
    folder, _ = shards
    store = tmp_path / "store"
    run_local(config(folder, store, tokens=True))
    only_tokens = resolve_variant(str(store))  # a token variant alone serves pooled readers too
    assert only_tokens.has_tokens
    run_local(config(folder, tmp_path / "pooled-only"))
    with pytest.raises(GendetError, match="with tokens"):
        resolve_variant(str(tmp_path / "pooled-only"), tokens=True)
    pooled_summary = run_local(config(folder, store))
    pooled = resolve_variant(str(store))
    assert not pooled.has_tokens and pooled.url != only_tokens.url
    assert resolve_variant(str(store), ENCODER, tokens=True).url == only_tokens.url
    # the pooled store is today's: its schema and key carry nothing of tokens
    table = pq.read_table(os.path.join(pooled.url, "a-000000.parquet"))
    assert table.schema == feature_schema(392, "float16") and pooled_summary["quarantined"] == 0
    manifest = gio.read_json(os.path.join(pooled.url, MANIFEST))
    assert not {"tokens", "token_grid", "token_dim"} & set(manifest)
    # the pooled feature is the same whichever variant holds it
    token_table = pq.read_table(os.path.join(only_tokens.url, "a-000000.parquet"))
    np.testing.assert_allclose(feature_matrix(table["feature"]).astype(np.float32),
                               feature_matrix(token_table["feature"]).astype(np.float32), atol=1e-3)


def test_token_grid_coarsens_tokens_and_masks(shards, tmp_path):
    folder, expected = shards
    store = tmp_path / "store"
    run_local(config(folder, store, tokens=True))
    run_local(config(folder, store, tokens=True, token_grid="4x4"))
    fine = next(v for v in _token_variants(store) if v.token_grid == (8, 8))
    coarse = next(v for v in _token_variants(store) if v.token_grid == (4, 4))
    assert coarse.url.endswith("__tok4x4") and coarse.token_dim == 288
    encoder, fine_rows, coarse_rows = load_encoder(ENCODER), rows_of(fine), rows_of(coarse)
    assert set(fine_rows) == set(coarse_rows)
    for key, row in coarse_rows.items():
        tokens = np.asarray(row["tokens"], np.float32).reshape(16, 288)
        native = torch.from_numpy(np.asarray(fine_rows[key]["tokens"], np.float32).reshape(1, 64, 288))
        np.testing.assert_allclose(tokens, coarsen(native, (8, 8), (4, 4))[0].numpy(), rtol=1e-2, atol=1e-2)
        if expected[key]["mask"] is not None:
            from gendet.encoders.tokens import geometry_mask

            want = grid_fractions(geometry_mask(encoder.preprocessor, expected[key]["mask"]), (4, 4))[0].numpy()
            np.testing.assert_allclose(np.asarray(row["token_mask"], np.float32), want, atol=2e-3)


def _token_variants(store):
    from gendet.features.store import list_variants

    return [v for v in list_variants(str(store)) if v.has_tokens]


def test_parts_write_the_same_token_store_as_the_plain_runner(shards, tmp_path):
    """The Ray pipeline's writer path (part files, then a finalizer) without Ray."""
    folder, _ = shards
    plain = run_local(config(folder, tmp_path / "plain", tokens=True, token_grid="4x4"))
    plan = prepare(config(folder, tmp_path / "parts", tokens=True, token_grid="4x4"))
    mapper = PartWritingMapper(plan.info.encoder, variant_url=plan.info.url, token_grid=plan.info.token_grid)
    for url in plan.todo:
        for batch in plan.reader.read(url):
            mapper(batch)
    stats = finalize_shard(plan.info, "b-000000")
    assert stats["token_grid"] == [4, 4] and stats["quarantined_by_reason"] == {"bad_mask": 2}
    ours = pq.read_table(os.path.join(plan.info.url, "b-000000.parquet"))
    theirs = pq.read_table(os.path.join(plain["output"], "b-000000.parquet"))
    assert ours.schema == theirs.schema == feature_schema(392, "float16", (4, 4), 288)
    exact = [c for c in ours.column_names if c not in ("feature", "tokens")]
    assert ours.select(exact).equals(theirs.select(exact))
    np.testing.assert_allclose(feature_matrix(ours["tokens"]).astype(np.float32),
                               feature_matrix(theirs["tokens"]).astype(np.float32), atol=1e-2)


@pytest.mark.parametrize("flags, needle", [
    (["--tokens", "--token-grid", "4by4"], "--token-grid '4by4': give ROWSxCOLS"),
    (["--tokens", "--token-grid", "0x4"], "give ROWSxCOLS with positive integers"),
    (["--tokens", "--token-grid", "16x16"], "finer than spectrum:v1's native 8x8 grid; pass --token-grid 8x8"),
    (["--token-grid", "4x4"], "add --tokens"),
    (["--tokens", "--encoder", "open_clip:RN50/none"], "--tokens: encoder open_clip:RN50/none has no token grid"),
])
def test_bad_token_flags_are_one_line_before_any_work(shards, tmp_path, capsys, flags, needle):
    folder, _ = shards
    argv = ["extract", str(folder), str(tmp_path / "store"), "--local"]
    code = gendet_main(argv + (flags if "--encoder" in flags else [*flags, "--encoder", ENCODER]))
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err, err
    assert not (tmp_path / "store").exists()


def test_an_open_clip_vit_stores_its_patch_tokens(shards, tmp_path):
    """The driver's grid (read from the config, no weights) is the loaded ViT's; float32 features
    store float32 tokens."""
    folder, _ = shards
    name = "open_clip:GenDet-Debug-ViT/none"
    run_local(ExtractConfig(shards=str(folder / "a-000000.tar"), features=str(tmp_path / "store"), encoder=name,
                            tokens=True, feature_dtype="float32", decode_workers=0))
    variant, encoder = resolve_variant(str(tmp_path / "store"), tokens=True), load_encoder(name)
    assert (variant.token_grid, variant.token_dim) == (tuple(encoder.token_grid), encoder.token_dim) == ((4, 4), 64)
    table = pq.read_table(os.path.join(variant.url, "a-000000.parquet"))
    assert table.schema == feature_schema(64, "float32", (4, 4), 64) and table.num_rows == 4


def test_a_resizing_degradation_takes_the_mask_along(shards, tmp_path):
    folder, expected = shards
    summary = run_local(config(folder / "a-000000.tar", tmp_path / "store", tokens=True, degrade="resize:64"))
    variant = resolve_variant(str(tmp_path / "store"), degrade=summary["degrade"], tokens=True)
    assert os.path.basename(variant.url).endswith("__resize64__tok8x8")
    encoder = load_encoder(ENCODER)
    for key, row in rows_of(variant).items():
        if expected[key]["mask"] is not None:  # the image was resized to 64 px, its mask alike: still aligned
            np.testing.assert_allclose(np.asarray(row["token_mask"], np.float32), encoder.token_mask(expected[key]["mask"]),
                                       atol=0.1)
