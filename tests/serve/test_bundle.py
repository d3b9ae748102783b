"""Encoder weights travel with a logged model: a serving process scores with the model's own copy
when the bucket (or hub) the weights came from is out of reach, and refuses a copy that changed."""

from __future__ import annotations

import fsspec
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from gendet import GendetError
from gendet.encoders.registry import load_encoder, load_preprocess, weights_identity
from gendet.method.gendet.detector import Detector, build_method_nets
from gendet.method.gendet.networks import Arch
from gendet.serve import pyfunc
from gendet.serve.batch.scoring import load_files, model_files
from gendet.serve.bundle import BUNDLE_DIR, BUNDLE_MANIFEST
from gendet.serve.predict import load_scorer, predict
from gendet.serve.scorer import ImageScorer

DEBUG_CLIP = "open_clip:GenDet-Debug-ViT/none"
BUCKET = "memory://bundle-test/weights/debug.pt"


@pytest.fixture
def bucket_detector(tmp_path, monkeypatch):
    """A detector over a debug CLIP whose weights live in a "bucket" (memory://, this process only)."""
    import open_clip

    monkeypatch.setenv("GENDET_CACHE", str(tmp_path / "cache"))  # no local copy left behind by the loader
    load_preprocess(DEBUG_CLIP)  # registers the shipped configs with open_clip
    torch.manual_seed(123)
    weights = tmp_path / "debug.pt"
    torch.save(open_clip.create_model("GenDet-Debug-ViT", pretrained=None).state_dict(), weights)
    with fsspec.open(BUCKET, "wb") as f:
        f.write(weights.read_bytes())
    encoder = load_encoder(DEBUG_CLIP, weights=BUCKET)
    torch.manual_seed(0)
    arch = Arch(feature_dim=encoder.dim, layers=1, heads=2)
    det = Detector(method="gendet", arch=arch, nets=build_method_nets("gendet", arch), encoder=encoder.name,
                   encoder_weights=encoder.weights_ref, preprocess_hash=encoder.preprocess_hash,
                   encoder_weights_digest=weights_identity(DEBUG_CLIP, BUCKET)[1], threshold=0.5)
    yield det
    fsspec.filesystem("memory").rm("/bundle-test", recursive=True)


def test_the_logged_model_scores_with_its_own_weights_when_the_bucket_is_gone(bucket_detector, tmp_path, tiny_images):
    model_dir = pyfunc.save_detector_model(bucket_detector, str(tmp_path / "model"))
    plain = bucket_detector.save(str(tmp_path / "plain"))  # the detector alone: weights by reference
    bundle = tmp_path / "model" / "artifacts" / "detector" / BUNDLE_DIR
    assert sorted(p.name for p in bundle.iterdir()) == ["debug.pt", BUNDLE_MANIFEST]
    paths = [str(p) for p in tiny_images[:3]]
    before = [r["probability"] for r in predict(model_dir, paths)]
    frame = pd.DataFrame({"image": [pyfunc.b64(p.read_bytes()) for p in tiny_images[:3]]})
    fsspec.filesystem("memory").rm(BUCKET)  # the serving node cannot reach the bucket
    with pytest.raises(GendetError, match="not found"):  # the reference is out of reach now
        load_scorer(plain)
    np.testing.assert_allclose([r["probability"] for r in predict(model_dir, paths)], before, rtol=1e-6)
    served = mlflow.pyfunc.load_model(model_dir).predict(frame)
    np.testing.assert_allclose(served["probability"].astype(float), before, rtol=1e-5)
    # gendet score and gendet serve ship the model's files to their workers, its weights among them
    files, _, _ = model_files(model_dir)
    assert f"{BUNDLE_DIR}/debug.pt" in files
    detector, bundled = load_files(files)
    assert bundled and ImageScorer.from_detector(detector, bundled=bundled).encoder.dim == detector.feature_dim


def test_a_bundled_copy_that_changed_is_refused_and_so_are_weights_other_than_the_trained_ones(bucket_detector, tmp_path):
    model_dir = pyfunc.save_detector_model(bucket_detector, str(tmp_path / "model"))
    copy = tmp_path / "model" / "artifacts" / "detector" / BUNDLE_DIR / "debug.pt"
    data = bytearray(copy.read_bytes())
    data[-10] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(GendetError, match="changed since the model was logged"):
        load_scorer(model_dir)
    other = bucket_detector
    other.encoder_weights_digest = "sha256:" + "0" * 64  # trained on other weights than the bucket holds
    with pytest.raises(GendetError, match="not the encoder weights the detector was trained on"):
        pyfunc.save_detector_model(other, str(tmp_path / "other"))
