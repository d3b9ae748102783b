"""The trainer: which parameters each stage changes, bit-exact resume, the ladder in one call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gendet.config import ConfigError
from gendet.eval.metrics import metrics_report
from gendet.features.sources import TensorSource, synthetic_clusters
from gendet.method.config import preset
from gendet.method.trainer import Trainer, plan, train_all

DIM = 32
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny(**overrides):
    return preset("debug", **{"width": 16, "heads": 2, "batch_size": 32, **overrides})


@pytest.fixture(scope="module")
def source():
    x, y = synthetic_clusters(64, DIM, seed=1)
    return TensorSource(x, y, batch_size=32, seed=3)


def snapshot(nets):
    return {k: [p.detach().clone() for p in n.parameters()] for k, n in nets.items()}


def changed(before, after):
    return {k for k in before if any(not torch.equal(a, b) for a, b in zip(before[k], after[k]))}


EXPECTED = {
    "pretrain": {"teacher", "probe"},
    "a": {"student.ts_real", "student.ts_fake", "student.gendet"},
    "b": {"student.ts_fake", "student.gendet"},
    "c": {"augmenter"},
    "classifier": {"classifier.ts_real", "classifier.ts_fake", "classifier.gendet"},
}


def test_each_stage_changes_exactly_its_networks(source):
    cfg = tiny(rotations=2)
    seen = []
    trainer = Trainer(cfg, source, report=lambda stage, metrics, _: seen.append((stage, snapshot(trainer.nets))))
    before = snapshot(trainer.nets)
    for key, opt in trainer.opts.items():  # each optimizer holds only its own network
        assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in trainer.nets[key].parameters()}
    trainer.train()
    assert [s for s, _ in seen] == [s.name for s in plan(cfg)]
    for stage, after in seen:
        assert changed(before, after) == EXPECTED[stage.split(".")[-1]], stage
        before = after
    assert not any(p.requires_grad for n in trainer.nets.values() for p in n.parameters())


def test_resume_after_interruption_is_bit_identical(source, tmp_path):
    cfg = tiny(rotations=3, methods=("gendet", "ts_fake"))
    straight = Trainer(cfg, source)
    straight.train()

    class Stop(Exception):
        pass

    def stop_after_r02b(stage, metrics, checkpoint_dir):
        assert checkpoint_dir == str(tmp_path)
        if stage == "r02.b":
            raise Stop

    with pytest.raises(Stop):
        Trainer(cfg, source, checkpoint_dir=str(tmp_path), report=stop_after_r02b).train()
    resumed = Trainer(cfg, source, checkpoint_dir=str(tmp_path))
    resumed.train()
    assert resumed.history[0]["stage"] == "pretrain" and len(resumed.history) == len(straight.history)
    for key, net in straight.nets.items():
        for (name, a), b in zip(net.state_dict().items(), resumed.nets[key].state_dict().values()):
            assert torch.equal(a, b), f"{key}.{name}"
    assert len(list(tmp_path.glob("stage-*.pt"))) == cfg.keep_checkpoints
    # another worker resumes from the shared checkpoint while writing to its own folder
    other = Trainer(cfg, source, checkpoint_dir=str(tmp_path / "rank1"), resume_from=str(tmp_path))
    other.train()
    assert torch.equal(other.nets["augmenter"].net.pos, straight.nets["augmenter"].net.pos)


def test_resume_with_another_config_is_refused(source, tmp_path):
    Trainer(tiny(rotations=1, methods=("teacher",)), source, checkpoint_dir=str(tmp_path)).train()
    with pytest.raises(ConfigError, match="another config"):
        Trainer(tiny(rotations=1, methods=("teacher",), seed=5), source, checkpoint_dir=str(tmp_path)).train()


@pytest.mark.parametrize("labels, words", [((0, 0), "no fake rows"), ((1, 1), "no real rows")])
def test_one_sided_training_data_fails_before_work(labels, words):
    only = TensorSource(torch.randn(2, DIM), torch.tensor(labels))
    with pytest.raises(ConfigError, match=words):
        train_all(tiny(), only)


def test_ladder_trains_all_methods_and_reports_per_subset():
    x, y = synthetic_clusters(300, DIM, generator_shift=0, seed=0)
    cfg = tiny(rotations=2, teacher_epochs=3, classifier_epochs=3, classifier_lr=3e-3)
    calibration = TensorSource(*synthetic_clusters(100, DIM, seed=7))
    result = train_all(cfg, TensorSource(x, y, batch_size=32), calibration=calibration, encoder="synthetic")
    assert set(result.detectors) == set(cfg.methods)
    assert {r["stage"] for r in result.history} == {s.name for s in plan(cfg)}

    seen_x, seen_y = synthetic_clusters(200, DIM, generator_shift=0, seed=11)
    unseen_x, unseen_y = synthetic_clusters(200, DIM, generator_shift=1, seed=12)
    test_x = torch.cat([seen_x, unseen_x])
    labels = torch.cat([seen_y, unseen_y]).numpy()
    subsets = np.array(["seen"] * 400 + ["unseen"] * 400)
    reports = {}
    for method, det in result.detectors.items():
        assert det.target_fpr == cfg.target_fpr and det.encoder == "synthetic"
        reports[method] = metrics_report(det.score(test_x), labels, subsets, threshold=0.5,
                                         calibrated_threshold=det.threshold, target_fpr=det.target_fpr,
                                         model=method, encoder="synthetic")
        assert set(reports[method]["subsets"]) == {"seen", "unseen"}
    # Chance is AP 0.5 / accuracy 0.5; the seen generator is separable (Bayes accuracy ~0.98).
    for method in ("linear_probe", "teacher"):
        seen = reports[method]["subsets"]["seen"]
        assert seen["ap"] > 0.95 and seen["acc"] > 0.85, (method, seen)
    for method in ("gendet", "ts_fake", "ts_real"):
        seen = reports[method]["subsets"]["seen"]
        assert seen["ap"] > 0.8 and seen["best_acc"] > 0.75, (method, seen)
        # the calibrated threshold keeps the false-positive rate near the target on new reals
        assert reports[method]["subsets"]["seen"]["real_acc_calibrated"] > 0.8
