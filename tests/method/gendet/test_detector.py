"""A trained detector saved and loaded again scores exactly as before, for every method."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gendet import GendetError
from gendet.features.sources import TensorSource, synthetic_clusters
from gendet.method.gendet.config import METHODS, preset
from gendet.method.gendet.detector import Detector, calibrate
from gendet.method.gendet.trainer import train_all

DIM = 20  # not a multiple of the width: exercises the padding


@pytest.fixture(scope="module")
def detectors():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: extra threads only wait on each other
    x, y = synthetic_clusters(48, DIM, seed=2)
    cfg = preset("debug", width=16, heads=2, rotations=1, batch_size=32)
    yield train_all(cfg, TensorSource(x, y, batch_size=32), encoder="open_clip:test", encoder_weights="sha256:00",
                    preprocess_hash="ph").detectors
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(detectors, method, tmp_path):
    det = detectors[method]
    det.threshold, det.target_fpr = 0.42, 0.05
    x = synthetic_clusters(10, DIM, seed=9)[0]
    before = det.score(x)
    assert before.shape == (20,) and np.all((before >= 0) & (before <= 1))
    det.save(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detector.json", "model.safetensors"]
    assert load_file(str(tmp_path / "model.safetensors"))  # plain tensors, no pickle
    args = json.loads((tmp_path / "detector.json").read_text())
    assert args["method"] == method and args["feature_dim"] == DIM and args["encoder"] == "open_clip:test"
    facts = (args["encoder_weights"], args["preprocess_hash"], args["threshold"], args["target_fpr"])
    assert facts == ("sha256:00", "ph", 0.42, 0.05)
    loaded = Detector.load(str(tmp_path))
    assert np.array_equal(loaded.score(x), before)
    assert np.array_equal(loaded.score(x.numpy().astype(np.float16)), det.score(x.half()))


def test_score_rejects_wrong_width(detectors):
    with pytest.raises(GendetError, match=r"\[N, 20\]"):
        detectors["gendet"].score(np.zeros((2, 21), dtype=np.float32))


def test_load_from_an_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(GendetError, match="no detector.json"):
        Detector.load(str(tmp_path))


def test_calibrate_sets_threshold_from_held_out_reals(detectors):
    det = detectors["teacher"]
    x, y = synthetic_clusters(50, DIM, seed=4)
    threshold = calibrate(det, TensorSource(x, y, batch_size=16), 0.1)
    real_scores = det.score(x[y == 0])
    assert threshold in set(real_scores.tolist())
    assert np.mean(real_scores > threshold) <= 0.1 and det.target_fpr == 0.1


def test_calibrate_fits_the_uncertain_band_from_held_out_fakes_and_saves_it(detectors, tmp_path):
    det = detectors["ts_real"]
    x, y = synthetic_clusters(50, DIM, seed=5)
    x = x + 0.8 * torch.randn_like(x)  # noisy rows: the classes overlap, so a band exists
    calibrate(det, TensorSource(x, y, batch_size=16), 0.05, target_miss=0.1)
    low, high = det.band()
    fakes, reals = det.score(x[y == 1]), det.score(x[y == 0])
    assert low < high == det.threshold and det.target_miss == 0.1
    assert np.mean(fakes <= low) <= 0.1 and np.mean(reals > high) <= 0.05
    det.save(str(tmp_path))
    assert Detector.load(str(tmp_path)).band() == (low, high)
    assert det.band(threshold=low / 2) == (low / 2, low / 2)  # an override below the band closes it
    det.band_low, det.target_miss = None, None  # a model saved before 0.9.0: no band
    assert det.band() == (high, high)


def test_a_damaged_saved_detector_is_a_one_line_error_naming_the_file(detectors, tmp_path):
    saved = tmp_path / "det"
    detectors["gendet"].save(str(saved))
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut off mid-copy
    with pytest.raises(GendetError, match="model.safetensors: not the weights detector.json was written with") as err:
        Detector.load(str(saved))
    assert "\n" not in str(err.value)
    args = json.loads((saved / "detector.json").read_text())
    del args["weights_sha256"]  # as a detector saved before 0.7.0: the weights themselves are checked
    (saved / "detector.json").write_text(json.dumps(args))
    with pytest.raises(GendetError, match="model.safetensors: not the weights detector.json describes"):
        Detector.load(str(saved))
    weights.unlink()
    with pytest.raises(GendetError, match="model.safetensors: missing"):
        Detector.load(str(saved))


def test_a_changed_weight_byte_is_refused_at_load(detectors, tmp_path):
    saved = tmp_path / "det"
    detectors["gendet"].save(str(saved))
    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(GendetError, match="the file changed since it was saved"):
        Detector.load(str(saved))


@pytest.mark.parametrize("field, value, needle", [
    ("threshold", -1, "'threshold' -1"), ("threshold", float("nan"), "NaN is not a number JSON allows"),
    ("threshold", "0.5", "'threshold'"),
    ("platt", [1e300, 1e300], "'platt'"), ("platt", [1.0, float("inf")], "Infinity is not a number"),
    ("target_fpr", 2, "'target_fpr'"), ("band_low", 2.0, "'band_low' 2.0"), ("target_miss", 0, "'target_miss'"),
    ("encoder", 5, "'encoder' must be a string"), ("extra", [1], "'extra' must be an object"),
])
def test_tampered_calibration_fields_are_refused_at_load(detectors, tmp_path, field, value, needle):
    saved = tmp_path / "det"
    detectors["gendet"].save(str(saved))
    args = json.loads((saved / "detector.json").read_text())
    args[field] = value
    (saved / "detector.json").write_text(json.dumps(args))
    with pytest.raises(GendetError, match=needle) as err:
        Detector.load(str(saved))
    assert "\n" not in str(err.value)


def test_a_deeply_nested_detector_json_is_one_line(detectors, tmp_path):
    saved = tmp_path / "det"
    detectors["gendet"].save(str(saved))
    text = (saved / "detector.json").read_text()
    (saved / "detector.json").write_text(text.rstrip().rstrip("}") + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(GendetError, match=r"detector.json: not a valid detector.json \(nested deeper than 64\)"):
        Detector.load(str(saved))
    (saved / "detector.json").write_text(text.rstrip().rstrip("}") + ', "huge": ' + "9" * 5000 + "}")
    with pytest.raises(GendetError, match="a number of 5000 characters"):
        Detector.load(str(saved))


def test_a_diverged_detector_is_never_written(detectors, tmp_path):
    import copy

    import torch

    det = copy.deepcopy(detectors["gendet"])  # the fixture is shared
    with torch.no_grad():
        next(iter(det.nets.values())).parameters().__next__().fill_(float("nan"))
    with pytest.raises(GendetError, match="non-finite weights"):
        det.save(str(tmp_path / "det"))
    assert not (tmp_path / "det").exists()


@pytest.mark.parametrize("field, value", [("width", 10**9), ("feature_dim", -3), ("layers", "many"), ("heads", 7)])
def test_an_arch_outside_what_gendet_writes_is_refused_before_building(detectors, tmp_path, field, value):
    saved = tmp_path / "det"
    detectors["gendet"].save(str(saved))
    args = json.loads((saved / "detector.json").read_text())
    args["arch"][field] = value
    (saved / "detector.json").write_text(json.dumps(args))
    with pytest.raises(GendetError, match=f"detector.json: arch (heads|{field})"):
        Detector.load(str(saved))


def test_platt_on_rows_a_model_separates_stays_finite_and_short_of_certainty():
    """A model's own training family is often separated perfectly; Platt's smoothed targets keep
    the fit a probability (at most (N+ + 1) / (N+ + 2) on the fakes), not a step at 1e-32."""
    from gendet.method.saved import fit_platt

    margins = np.r_[np.linspace(-30, -10, 70), np.linspace(10, 30, 70)]  # a 20-wide gap: separable
    labels = np.r_[np.zeros(70), np.ones(70)]
    a, b = fit_platt(margins, labels)
    p = 1 / (1 + np.exp(-(a * margins + b)))
    assert 0 < a < 5 and p[labels == 1].min() > 0.5 > p[labels == 0].max()
    assert p.max() < 0.9999 and p.min() > 1e-4  # not saturated: the unweighted fit gave 1 - 1e-13 here


def test_platt_calibration_gives_probabilities_that_are_not_saturated(tmp_path):
    from gendet.features.sources import TensorSource, synthetic_clusters
    from gendet.method.gendet.config import preset
    from gendet.method.gendet.detector import Detector, calibrate
    from gendet.method.gendet.trainer import train_all

    x, y = synthetic_clusters(128, 32, seed=1)
    held_x, held_y = synthetic_clusters(128, 32, seed=7)
    cfg = preset("debug", width=16, heads=2, batch_size=32, methods=("teacher",), teacher_epochs=20)
    det = train_all(cfg, TensorSource(x, y, batch_size=32, seed=3)).detectors["teacher"]
    raw = det.score(held_x)
    threshold = calibrate(det, TensorSource(held_x, held_y, batch_size=32, seed=0), 0.05)
    scaled = det.score(held_x)
    assert det.platt is not None and det.platt[0] > 0  # a monotone map: the ranking is kept
    assert np.array_equal(np.argsort(raw, kind="stable"), np.argsort(scaled, kind="stable")) or \
        np.corrcoef(raw, scaled)[0, 1] > 0.99
    # probabilities mean something: the mean P(fake) of the fakes is near the share caught
    assert 0.2 < threshold < 0.99 and abs(scaled[held_y == 1].mean() - (scaled[held_y == 1] > 0.5).mean()) < 0.25
    assert np.mean(scaled[held_y == 0] > threshold) <= 0.05 + 1e-9
    det.save(str(tmp_path / "d"))
    assert Detector.load(str(tmp_path / "d")).platt == det.platt
    np.testing.assert_allclose(Detector.load(str(tmp_path / "d")).score(held_x), scaled)
