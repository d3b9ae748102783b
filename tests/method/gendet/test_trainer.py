"""The trainer: which parameters each stage changes, bit-exact resume, the ladder in one call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gendet.config import ConfigError
from gendet.eval.metrics import metrics_report
from gendet.features.sources import TensorSource, synthetic_clusters
from gendet.method.gendet.config import preset
from gendet.method.gendet.schedule import plan
from gendet.method.gendet.trainer import Trainer, train_all

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
    for key, opt in trainer.opts.items():  # each optimizer holds only its own network (student.M@stage: student.M's)
        net = trainer.nets[key.split("@")[0]]
        assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in net.parameters()}
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


# --- the method as the paper says (issue 11) ---

def _hinge_on_fakes(trainer, method, source):
    """Mean Eq. 2 hinge (without alpha) of ``method``'s student on every training fake."""
    from gendet.method.gendet import losses

    xs = torch.cat([x for x, _ in source.batches("fake", 0)])
    with torch.no_grad():
        g = trainer.nets["augmenter"](xs) if method == "gendet" else xs
        return losses.dis_fake(trainer.nets["teacher"].body(g), trainer.nets[f"student.{method}"](g),
                               margin=trainer.cfg.margin, alpha=1.0).item()


def _run_through(trainer, last):
    for stage in trainer.stages[: [s.name for s in trainer.stages].index(last) + 1]:
        trainer.run_stage(stage, first_epoch=0)


def test_one_stage_b_halves_the_training_fakes_hinge():
    x, y = synthetic_clusters(256, DIM, seed=2)
    source = TensorSource(x, y, batch_size=32, seed=3)
    trainer = Trainer(tiny(rotations=1, stage_epochs=10, methods=("ts_fake",)), source)
    _run_through(trainer, "r01.a")
    before = _hinge_on_fakes(trainer, "ts_fake", source)
    trainer.run_stage(trainer.stages[2], first_epoch=0)  # r01.b
    after = _hinge_on_fakes(trainer, "ts_fake", source)
    assert before > 0.1 and after <= 0.5 * before, (before, after)


def _student_after_b(alpha, student_optimizer):
    x, y = synthetic_clusters(128, DIM, seed=2)
    source = TensorSource(x, y, batch_size=32, seed=3)
    trainer = Trainer(tiny(rotations=1, methods=("ts_fake",), alpha=alpha, student_optimizer=student_optimizer), source)
    _run_through(trainer, "r01.a")
    start = torch.cat([p.detach().flatten() for p in trainer.nets["student.ts_fake"].parameters()])
    trainer.run_stage(trainer.stages[2], first_epoch=0)
    end = torch.cat([p.detach().flatten() for p in trainer.nets["student.ts_fake"].parameters()])
    return end - start


def test_alpha_is_a_pure_scale_under_a_per_stage_adam():
    # documented in TrainConfig.student_optimizer: AdamW's step does not depend on a loss's scale,
    # so alpha (which weighs Eq. 2 trained alone) barely changes what stage (b) learns
    small, large = _student_after_b(0.01, "per_stage"), _student_after_b(1.0, "per_stage")
    assert (small - large).norm() < 0.02 * large.norm() and large.norm() > 0


def test_per_stage_student_optimizers_are_separate():
    trainer = Trainer(tiny(rotations=1), TensorSource(*synthetic_clusters(64, DIM, seed=1), batch_size=32, seed=3))
    assert {"student.gendet@real", "student.gendet@fake", "student.ts_real@real"} <= set(trainer.opts)
    assert "student.ts_real@fake" not in trainer.opts  # ts_real has no stage (b)
    shared = Trainer(tiny(rotations=1, student_optimizer="shared"),
                     TensorSource(*synthetic_clusters(64, DIM, seed=1), batch_size=32, seed=3))
    assert "student.gendet" in shared.opts and "student.gendet@fake" not in shared.opts


def test_classifier_input_choice_changes_what_the_classifier_learns():
    """The same run but for ``classifier_input``: identical when repeated, different between choices
    (a choice the trainer ignored would give three equal detectors)."""
    x, y = synthetic_clusters(64, DIM, seed=1)

    def scores(choice: str) -> np.ndarray:
        result = train_all(tiny(rotations=1, methods=("gendet",), classifier_input=choice),
                           TensorSource(x, y, batch_size=32, seed=3))
        out = result.detectors["gendet"].score(x)
        assert np.isfinite(out).all() and out.shape == (len(x),)
        return out

    raw, augmented, both = scores("raw"), scores("augmented"), scores("both")
    assert np.array_equal(scores("raw"), raw)  # deterministic: any difference below is the choice's
    for a, b in ((raw, augmented), (raw, both), (augmented, both)):
        assert np.abs(a - b).max() > 1e-6  # small: the tiny run's classifier barely moves off its start


def test_diagnostics_per_rotation_in_the_history():
    x, y = synthetic_clusters(256, DIM, seed=1)
    cfg = tiny(rotations=3, methods=("gendet",))
    history = Trainer(cfg, TensorSource(x, y, batch_size=32, seed=3)).train()
    rows = {(r["stage"], r["job"]): r for r in history}
    for r in ("r01", "r02", "r03"):
        real, fake = rows[(f"{r}.a", "real.gendet")], rows[(f"{r}.b", "fake.gendet")]
        assert real["discrepancy"] == pytest.approx(real["mean_loss"])  # Eq. 1 mean-reduced is the discrepancy
        assert fake["mean_loss"] == pytest.approx(cfg.alpha * fake["hinge"]) and 0 < fake["hinge"] <= cfg.margin
        if r != "r01":  # once stage (b) has pushed: the fakes' discrepancy is above the reals' (what N_c reads)
            assert fake["discrepancy"] > real["discrepancy"]
        assert 0 < rows[(f"{r}.c", "augmenter")]["g_shift"] <= 0.5 + 1e-6  # within TrainConfig.augmenter_bound


def test_diagnostics_read_no_extra_forward_but_gendets_raw_fakes_every_few_batches(monkeypatch):
    """The diagnostics come from each step's own forward: a stage of real.M or the augmenter runs
    the student / G once per batch, as its loss needs; only gendet's raw-fake discrepancy costs a
    student forward more, on every DIAGNOSTIC_EVERY-th batch (issue 11: training speed)."""
    from gendet.method.gendet import trainer as trainer_module

    x, y = synthetic_clusters(256, DIM, seed=1)  # 256 fakes: 8 batches per fake stage
    trainer = Trainer(tiny(rotations=1, methods=("gendet",)), TensorSource(x, y, batch_size=32, seed=3))
    calls: dict[str, int] = {}
    for key in ("student.gendet", "augmenter"):
        trainer.nets[key].register_forward_hook(lambda *_, k=key: calls.__setitem__(k, calls.get(k, 0) + 1))
    stages = {s.name: s for s in trainer.stages}
    trainer.train()  # warm the networks: counts below are per stage
    for name, expected in (("r01.a", {"student.gendet": 8}),
                           ("r01.b", {"student.gendet": 8 + 8 // trainer_module.DIAGNOSTIC_EVERY, "augmenter": 8}),
                           ("r01.c", {"student.gendet": 8, "augmenter": 8})):
        calls.clear()
        trainer.run_stage(stages[name], first_epoch=0)
        assert calls == expected, name


def test_with_val_scored_calibration_is_fitted_on_held_out_training_rows_never_on_val(tmp_path):
    """GenImage has train and val only, so val is scored: the rows thresholds and Platt scaling are
    fitted on are a held-out part of the training rows, none of them val, none trained on."""
    from gendet.features.sources import ParquetSource
    from gendet.method.gendet.config import resolve_calibration_split
    from gendet.method.gendet.detector import Detector
    from helpers.synthetic_store import write_synthetic_store

    variant = write_synthetic_store(str(tmp_path / "store"), dim=DIM, per_split={"train": 200, "val": 40})
    cfg = resolve_calibration_split(tiny(rotations=1, methods=("gendet",), train_subsets=("seen",)),
                                    eval_splits=("val",), val_rows=160)
    assert cfg.calibration_split == "train_holdout"
    columns = ("key", "content_id", "split")
    calibration = ParquetSource(variant, **cfg.calibration_rows()).table(columns=columns).to_pylist()
    training = ParquetSource(variant, **cfg.training_rows()).table(columns=columns).to_pylist()
    assert calibration and {r["split"] for r in calibration} == {"train"}  # none of val
    assert {r["key"] for r in calibration}.isdisjoint(r["key"] for r in training)
    assert {r["content_id"] for r in calibration}.isdisjoint(r["content_id"] for r in training)
    result = train_all(cfg, ParquetSource(variant, batch_size=32, **cfg.training_rows()),
                       calibration=ParquetSource(variant, **cfg.calibration_rows()))
    det = result.detectors["gendet"]
    assert det.calibration_split == "train_holdout" and det.platt is not None and det.target_fpr == cfg.target_fpr
    det.save(str(tmp_path / "d"))
    assert Detector.load(str(tmp_path / "d")).calibration_split == "train_holdout"  # recorded in detector.json
    assert result.history[0]["rows"] == len(training)  # the held-out rows were not trained on


def test_val_calibration_reads_no_unseen_family_and_the_detector_says_which(tmp_path):
    """With test scored, the val rows of the training subset calibrate, not those of the family
    reported as unseen; detector.json names the subsets and counts the rows of each label."""
    from gendet.features.sources import ParquetSource
    from gendet.method.gendet.config import resolve_calibration_split
    from gendet.method.gendet.detector import Detector
    from helpers.synthetic_store import write_synthetic_store

    variant = write_synthetic_store(str(tmp_path / "store"), dim=DIM, per_split={"train": 100, "val": 30, "test": 30})
    cfg = resolve_calibration_split(tiny(rotations=1, methods=("gendet",), train_subsets=("seen",)),
                                    eval_splits=("test",), val_rows=120)
    assert cfg.calibration_split == "val"
    calibration = ParquetSource(variant, **cfg.calibration_rows())
    assert set(calibration.table(columns=("subset",))["subset"].to_pylist()) == {"seen"}  # "unseen" exists in val
    result = train_all(cfg, ParquetSource(variant, batch_size=32, **cfg.training_rows()), calibration=calibration)
    det = Detector.load(result.detectors["gendet"].save(str(tmp_path / "d")))
    counts = calibration.counts()
    assert det.calibration_subsets == ("seen",) and det.calibration_rows == counts and counts["fake"] > 0
