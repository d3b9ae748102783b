"""GAMMA's training step on token rows (gendet/method/gamma_train.py): targets, the epoch loop's
state and resume, the shards DDP workers take."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from gendet.config import ConfigError
from gendet.features.tokens import load_token_rows
from gendet.method.gamma.config import GammaConfig
from gendet.method.gamma.trainer import fit_gamma, gamma_targets, row_families, shard_rows, source_classes, trained_detector
from helpers.token_store import write_token_store

CFG = GammaConfig(width=16, layers=1, heads=2, epochs=3, batch_size=8, lr=3e-3)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    write_token_store(str(root), grid=(4, 4), dim=6, per_split={"train": 16, "test": 4})
    return load_token_rows(str(root), splits=["train"])


def test_families_and_targets(rows):
    fams = row_families(np.array(["", "inpaint_f8", "", "", "x"], dtype=object),
                        np.array(["sd", "inp", "sd", "cm", "s"], dtype=object), np.array([1, 1, 0, 1, 1]),
                        np.array(["", "inpaint", "", "copy_move", "splice"], dtype=object),
                        np.array([1.0, 0.3, 0.0, 0.0, 0.2]))
    assert fams.tolist() == ["sd", "inpaint_f8", "", "", "x"]  # a real and a copy-move: no generator
    sources = source_classes(rows)
    assert sources == ("camera", "inpaint_f8", "sd")
    t = gamma_targets(rows, sources)
    assert t.labels.tolist() == rows.labels.tolist()
    assert torch.equal(t.token_masks, torch.as_tensor(rows.token_mask))
    whole = (rows.subset == "sd") & (rows.labels == 1)
    partial = rows.manipulation == "inpaint"
    assert (t.token_sources[torch.as_tensor(whole)] == 2).all()
    assert (t.token_sources[torch.as_tensor(rows.labels == 0)] == 0).all()
    inside = torch.as_tensor(rows.token_mask[partial] >= 0.5)
    assert (t.token_sources[torch.as_tensor(partial)][inside] == 1).all()
    assert (t.token_sources[torch.as_tensor(partial)][~inside] == 0).all()
    with pytest.raises(ConfigError, match="not source classes"):
        gamma_targets(rows, ("camera", "sd"))


def test_shards_are_disjoint_and_equal():
    shards = [shard_rows(11, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3] and not set(shards[0]) & set(shards[1])
    with pytest.raises(ConfigError):
        shard_rows(2, 0, 3)


def _roundtrip(state: dict) -> dict:
    """Through bytes, as a checkpoint file is: weights_only, no pickled code."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return torch.load(io.BytesIO(buf.getvalue()), weights_only=True)


def test_resume_from_a_state_equals_an_uninterrupted_run(rows):
    full, sources = fit_gamma(rows, CFG)
    assert full.epoch == 3 and len(full.history) == 3 and full.history[-1]["loss"] < full.history[0]["loss"]
    seen = []
    first, _ = fit_gamma(rows, CFG, stop_after=1, on_epoch=lambda tr, row: seen.append(row["epoch"]))
    assert first.epoch == 1 and seen == [0]
    torch.manual_seed(123)  # whatever ran between: the state restores torch's RNG too
    resumed, _ = fit_gamma(rows, CFG, state=_roundtrip(first.state_dict()))
    assert resumed.epoch == 3 and [r["epoch"] for r in resumed.history] == [0, 1, 2]
    for k, v in full.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    det = trained_detector(resumed, sources, encoder="synthetic-tokens:v1")
    assert det.sources == sources and det.grid == (4, 4) and det.score(rows.tokens).shape == (len(rows),)
    done, _ = fit_gamma(rows, CFG, state=resumed.state_dict())  # a finished state trains no more
    assert done.epoch == 3 and len(done.history) == 3


def test_a_worker_trains_on_its_shard_and_the_ablation_without_heads(rows):
    half, _ = fit_gamma(rows, CFG, rank=1, world=2, stop_after=1)
    assert half.rows == len(rows) // 2
    plain, _ = fit_gamma(rows, GammaConfig(width=16, layers=1, heads=2, epochs=1, batch_size=8, seg_heads=False,
                                           reverse_attention=False))
    assert set(plain.history[0]) == {"epoch", "loss", "cls"}
