"""The refresh job's state: a shard counts as judged only once this model version has scored it
(real store files, the library functions called in the order ``pipelines.refresh`` calls them)."""

from __future__ import annotations

import json

import pytest
import torch

from gendet import GendetError
from gendet import io as gio
from gendet.eval import refresh_state as rs
from gendet.features.store import STATS_SUFFIX, done_shards
from gendet.method.gendet.detector import Detector, build_method_nets
from gendet.method.gendet.networks import Arch
from helpers.synthetic_store import write_synthetic_store

STEMS = ["synthetic-000000", "synthetic-000001", "synthetic-000002"]


def _model(version: str, name: str = "gendet") -> rs.ModelRef:
    return rs.ModelRef(uri=f"models:/{name}@champion", load_uri=f"models:/{name}/{version}", digest="ab" * 32,
                       name=name, version=version)


def _verdict(slipped: bool, fake: float) -> dict:
    return {"subset": "seen", "slipped": slipped, "reason": "r", "acc_calibrated": 0.7, "fake_acc_calibrated": fake,
            "ap": 0.9, "n_real": 3, "n_fake": 3}


def _refresh_cycle(store: str, variant: str, model: rs.ModelRef, *, crash: bool = False, in_source=STEMS) -> list[str]:
    """One run's bookkeeping: find what this model has not scored, 'score' it, record it unless the
    run dies first. Returns what it scored."""
    url = rs.state_url(store, variant, model)
    state = rs.load_state(url, model)
    done = done_shards(variant)
    todo = rs.unscored(state, done, in_source)
    if todo and not crash:
        state = rs.record(state, stems=todo, done=done, verdicts={"seen": _verdict(True, 0.2)}, run="run-1", at=100.0)
        rs.save_state(url, state)
    return todo


@pytest.fixture
def store(tmp_path):
    root = str(tmp_path / "features")
    return root, write_synthetic_store(root, shards=3, per_split={"test": 12})


def test_a_crash_between_extract_and_score_leaves_shards_to_score(store):
    root, variant = store
    model = _model("3")
    assert _refresh_cycle(root, variant, model, crash=True) == STEMS  # extracted, then the job died
    assert not gio.exists(rs.state_url(root, variant, model))
    assert _refresh_cycle(root, variant, model) == STEMS  # the next run scores them
    assert _refresh_cycle(root, variant, model) == []  # and then they are done
    state = rs.load_state(rs.state_url(root, variant, model), model)
    assert sorted(state["scored"]) == STEMS and rs.slipped_subsets(state) == ["seen"]
    assert state["subsets"]["seen"]["run"] == "run-1" and "subset" not in state["subsets"]["seen"]


def test_a_new_champion_version_rescores_every_shard_and_keeps_its_own_state(store):
    root, variant = store
    assert _refresh_cycle(root, variant, _model("3")) == STEMS
    assert _refresh_cycle(root, variant, _model("4")) == STEMS  # version 3's verdicts say nothing of version 4
    assert _refresh_cycle(root, variant, _model("3")) == []
    assert gio.basename(rs.state_url(root, variant, _model("4"))) == "gendet-v4.json"
    assert rs.state_url(root, variant, _model("4")).startswith(gio.join(root, rs.STATE_DIR, gio.basename(variant)))


def test_only_extracted_shards_of_shards_are_scored_and_a_reextracted_shard_again(store):
    root, variant = store
    model = _model("3")
    # SHARDS names a fourth shard whose extraction failed (no done marker) and omits one the store has
    assert _refresh_cycle(root, variant, model, in_source=STEMS[:2] + ["never-extracted"]) == STEMS[:2]
    assert _refresh_cycle(root, variant, model) == [STEMS[2]]
    stats_url = gio.join(variant, STEMS[1] + STATS_SUFFIX)
    stats = gio.read_json(stats_url)
    # the shard changed and was re-extracted (one more sample quarantined)
    gio.write_json_atomic(stats_url, {**stats, "read": stats["read"] + 1, "quarantined": stats["quarantined"] + 1})
    assert _refresh_cycle(root, variant, model) == [STEMS[1]]


def test_later_verdicts_replace_a_subsets_standing_alert(store):
    root, variant = store
    model = _model("3")
    state = rs.record(rs.empty_state(model), stems=STEMS[:1], done=done_shards(variant),
                      verdicts={"seen": _verdict(True, 0.1), "other": _verdict(False, 0.9)}, run="a", at=1.0)
    assert rs.slipped_subsets(state) == ["seen"]
    state = rs.record(state, stems=STEMS[1:], done=done_shards(variant), verdicts={"seen": _verdict(False, 0.8)}, run="b",
                      at=2.0)
    assert rs.slipped_subsets(state) == [] and state["subsets"]["other"]["run"] == "a" and state["updated_at"] == 2.0


def test_bad_or_foreign_state_files_are_one_line_errors(store):
    root, variant = store
    model = _model("3")
    url = rs.state_url(root, variant, model)
    gio.write_bytes_atomic(url, b"{not json")
    with pytest.raises(GendetError, match="not JSON") as err:
        rs.load_state(url, model)
    assert url in str(err.value) and "\n" not in str(err.value)
    gio.write_json_atomic(url, rs.empty_state(_model("4")))
    with pytest.raises(GendetError, match="gendet-v4"):
        rs.load_state(url, model)


def test_model_keys_uris_and_digests():
    assert rs.parse_registered("models:/gendet@champion") == ("gendet", "champion", "")
    assert rs.parse_registered("models:/gendet/7") == ("gendet", "", "7")
    for other in ("runs:/abc/detector", "/data/detector", "models:/m-0123abcd", "s3://b/models:/x"):
        assert rs.parse_registered(other) is None, other
    torch.manual_seed(0)
    arch = Arch(feature_dim=16, layers=1, heads=2)
    det = Detector(method="gendet", arch=arch, nets=build_method_nets("gendet", arch), encoder="synthetic:v1",
                   preprocess_hash="p", threshold=0.5, target_fpr=0.05)
    digest = rs.model_digest(det)
    assert rs.model_digest(det) == digest and len(digest) == 64
    det.threshold = 0.6  # another calibration is another model
    assert rs.model_digest(det) != digest
    local = rs.ModelRef(uri="/models/detector", load_uri="/models/detector", digest=digest)
    assert local.key == f"sha-{digest[:16]}" and local.label == "/models/detector" and local.version_label == digest[:12]
    assert _model("12", name="a b/c").key == "a-b-c-v12" and _model("12").version_label == "12"


def test_state_on_s3(moto_s3):
    root = f"s3://{moto_s3['bucket']}/refresh-state-test/features"
    variant = write_synthetic_store(root, shards=3, per_split={"test": 12})
    model = _model("3")
    assert _refresh_cycle(root, variant, model, crash=True) == STEMS
    assert _refresh_cycle(root, variant, model) == STEMS
    assert _refresh_cycle(root, variant, model) == []
    assert _refresh_cycle(root, variant, _model("4")) == STEMS
    saved = json.loads(gio.read_bytes(rs.state_url(root, variant, model)))
    assert sorted(saved["scored"]) == STEMS and rs.state_url(root, variant, model).startswith("s3://")
