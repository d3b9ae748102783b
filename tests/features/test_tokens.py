"""Reading token variants (gendet/features/tokens.py): a store written in the contract's schema,
and one written by the real `gendet extract --local --tokens`."""

from __future__ import annotations

import numpy as np
import pytest

from gendet import GendetError
from gendet.features.tokens import load_token_rows
from helpers.synthetic_store import write_synthetic_store
from helpers.token_store import ENCODER, write_masked_shards, write_token_store


def test_rows_columns_and_filters(tmp_path):
    write_token_store(str(tmp_path), grid=(4, 6), dim=5, per_split={"train": 6, "test": 4})
    rows = load_token_rows(str(tmp_path))
    assert len(rows) == 2 * (6 + 4) and rows.grid == (4, 6) and rows.token_dim == 5
    assert rows.tokens.shape == (20, 24, 5) and rows.tokens.dtype == np.float32
    assert rows.token_mask.shape == (20, 24) and set(rows.split) == {"train", "test"}
    fakes = rows.labels == 1
    whole = fakes & (rows.subset == "sd")
    assert (rows.token_mask[whole] == 1).all() and (rows.token_mask[~fakes] == 0).all()
    partial = fakes & (rows.subset == "inpaint-inpaint_f8")
    assert rows.has_mask[partial].all() and not rows.has_mask[whole].any()
    assert (rows.family[partial] == "inpaint_f8").all() and (rows.manipulation[partial] == "inpaint").all()
    assert np.allclose(rows.generated_fraction[partial], rows.token_mask[partial].mean(1))
    assert rows.variant.encoder == ENCODER and rows.detector_fields()["encoder"] == ENCODER

    train_sd = load_token_rows(str(tmp_path), subsets=["sd"], splits=["train"])
    assert len(train_sd) == 6 and set(train_sd.subset) == {"sd"} and set(train_sd.split) == {"train"}
    held = load_token_rows(str(tmp_path), splits=["train"], holdout="only", holdout_fraction=0.5)
    kept = load_token_rows(str(tmp_path), splits=["train"], holdout="exclude", holdout_fraction=0.5)
    assert len(held) + len(kept) == 12 and not set(held.content_id) & set(kept.content_id)
    shards = [load_token_rows(str(tmp_path), splits=["train"], shard=(r, 5)) for r in range(5)]
    assert [len(s) for s in shards] == [2] * 5  # 12 rows: 5 equal shards, 2 left out
    keys = [k for s in shards for k in s.key]
    assert len(set(keys)) == 10 and set(keys) <= set(rows.key[rows.split == "train"])
    assert np.array_equal(shards[1].tokens[0], rows.tokens[rows.key == shards[1].key[0]][0])
    with pytest.raises(GendetError, match="cannot be shared by 13 workers"):
        load_token_rows(str(tmp_path), splits=["train"], shard=(0, 13))
    picked = rows.select(rows.subset == "sd")
    assert len(picked) == 10 and picked.tokens.shape[1:] == (24, 5)


def test_a_store_without_token_variant_is_refused_naming_the_fix(tmp_path):
    write_synthetic_store(str(tmp_path), per_split={"train": 4, "test": 4})
    with pytest.raises(GendetError, match=r"no token variant.*gendet extract .*--tokens"):
        load_token_rows(str(tmp_path))
    with pytest.raises(GendetError, match="no feature store"):
        load_token_rows(str(tmp_path / "nothing"))


def test_a_store_from_the_real_extract(tmp_path):
    from pipelines.cli import main as gendet_main

    write_masked_shards(tmp_path / "shards", n=8, splits=("train", "test"))
    store = str(tmp_path / "store")
    assert gendet_main(["extract", str(tmp_path / "shards"), store, "--local", "--tokens", "--encoder", "spectrum:v1",
                        "--token-grid", "4x4"]) == 0
    rows = load_token_rows(store)
    assert len(rows) == 8 and rows.grid == (4, 4) and rows.tokens.shape == (8, 16, rows.token_dim)
    partial = rows.manipulation == "inpaint"
    assert partial.sum() == 2 and rows.has_mask[partial].all() and not rows.has_mask[~partial].any()
    # the top-left quarter of the image: the top-left 2x2 tokens of a 4x4 grid (up to the geometry's edges)
    grid = rows.token_mask[partial].reshape(-1, 4, 4)
    assert (grid[:, :2, :2] > 0.9).all() and (grid[:, 2:, 2:] < 0.1).all()
    assert set(rows.token_mask[rows.labels == 0].ravel()) == {0.0}
    assert set(rows.split) == {"train", "test"}
    assert load_token_rows(store, splits=["test"]).tokens.shape[0] == 4
