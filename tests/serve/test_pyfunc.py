"""The detector as an MLflow pyfunc model: what it holds, what it answers, and over real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import free_port, stop_process, wait_http

from gendet.method.gendet.detector import Detector
from gendet.serve import pyfunc


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_detector_dir) -> str:
    """A local MLflow model saved from a Detector object (not its directory)."""
    path = str(tmp_path_factory.mktemp("pyfunc") / "model")
    return pyfunc.save_detector_model(Detector.load(tiny_detector_dir), path)


def _b64_images(paths) -> list[str]:
    return [pyfunc.b64(Path(p).read_bytes()) for p in paths]


def test_saved_model_holds_the_detector_its_facts_and_no_pickle(model_dir, tiny_detector_dir):
    det = Detector.load(tiny_detector_dir)
    mlmodel = yaml.safe_load(Path(model_dir, "MLmodel").read_text())
    assert mlmodel["metadata"] == {"encoder": "spectrum:v1", "encoder_weights": det.encoder_weights,
                                   "encoder_weights_digest": det.encoder_weights_digest,
                                   "encoder_precision": det.encoder_precision,
                                   "preprocess_hash": det.preprocess_hash, "threshold": det.threshold,
                                   "target_fpr": det.target_fpr, "method": "gendet", "feature_dim": 392}
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["model_code_path"].endswith("pyfunc_model.py")  # models from code
    assert Path(model_dir, "pyfunc_model.py").is_file()
    assert not list(Path(model_dir).rglob("*.pkl")) and "python_model" not in flavor
    assert flavor["artifacts"]["detector"]["path"] == "artifacts/detector"  # gendet.serve.loading reads it there
    saved = Path(model_dir, "artifacts", "detector")
    assert Detector.load(str(saved)).args() == det.args()
    assert [c["name"] for c in json.loads(mlmodel["signature"]["inputs"])] == ["image"]
    outputs = [c["name"] for c in json.loads(mlmodel["signature"]["outputs"])]
    assert outputs == ["verdict", "probability", "band", "model", "encoder", "encoder_digest", "error",
                       "score", "is_fake", "threshold"]  # the reply, then 0.8's columns
    code = Path(model_dir, "code", "gendet")
    assert (code / "serve" / "pyfunc.py").is_file() and (code / "method" / "gendet" / "detector.py").is_file()
    # only what scoring imports travels with the model: no trainer, extraction, zoo or its weights
    assert not (code / "zoo").exists() and not (code / "extract").exists()
    assert not (code / "method" / "gendet" / "trainer.py").exists()
    pins = Path(model_dir, "requirements.txt").read_text().split()
    assert pyfunc.pin("torch", torch.__version__) in pins and not any(p.startswith("ray") for p in pins)
    assert not any("+" in p for p in pins) and len(pins) == len(set(pins))
    # and the environment files `mlflow models serve --env-manager virtualenv|conda` build from
    conda = yaml.safe_load(Path(model_dir, "conda.yaml").read_text())
    conda_pins = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pyfunc.pin("torch", torch.__version__) in conda_pins and not any("+" in p for p in conda_pins)
    example = json.loads(Path(model_dir, "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == ["image"]


def test_pyfunc_scores_equal_detector_scores_and_flags_bad_rows(model_dir, tiny_images, tiny_scores, tiny_detector_dir):
    model = mlflow.pyfunc.load_model(model_dir)
    frame = pd.DataFrame({"image": _b64_images(tiny_images) + ["not base64 !!", pyfunc.b64(b"plain text")]})
    out = model.predict(frame)
    n = len(tiny_images)
    threshold = Detector.load(tiny_detector_dir).threshold
    np.testing.assert_allclose(out["score"][:n].astype(float), list(tiny_scores.values()), rtol=1e-5, atol=1e-7)
    assert list(out["is_fake"][:n]) == [s > threshold for s in tiny_scores.values()]
    assert 0 < sum(out["is_fake"][:n]) < n  # the fixture's threshold splits the images
    assert (out["threshold"] == threshold).all() and (out["error"][:n] == "").all()
    assert out["error"][n].startswith("bad base64") and out["error"][n + 1].startswith("not_an_image")
    assert list(out["score"][n:]) == [None, None] and list(out["is_fake"][n:]) == [None, None]  # JSON null when served


def test_pyfunc_refuses_input_without_an_image_column(model_dir):
    model = mlflow.pyfunc.load_model(model_dir)
    with pytest.raises(Exception, match="image"):
        model.predict(pd.DataFrame({"picture": ["x"]}))


def test_pyfunc_caps_a_request_and_refuses_oversized_images_alone(model_dir, tiny_images, tiny_scores):
    import io

    from mlflow.exceptions import MlflowException
    from PIL import Image

    model = mlflow.pyfunc.load_model(model_dir, model_config={"max_images": 3, "max_pixels": 300 * 300})
    with pytest.raises(MlflowException, match="request has 4 images, at most 3"):
        model.predict(pd.DataFrame({"image": _b64_images(tiny_images[:1]) * 4}))
    big = io.BytesIO()
    Image.new("RGB", (400, 400), (90, 10, 200)).save(big, format="PNG")
    out = model.predict(pd.DataFrame({"image": [pyfunc.b64(big.getvalue())] + _b64_images(tiny_images[:2])}))
    assert out["error"][0].startswith("too_large: 400x400 pixels") and out["score"][0] is None
    np.testing.assert_allclose(out["score"][1:].astype(float), list(tiny_scores.values())[:2], rtol=1e-5, atol=1e-7)
    tight = mlflow.pyfunc.load_model(model_dir, model_config={"max_request_bytes": 100})
    with pytest.raises(MlflowException, match="over the limit of 100"):
        tight.predict(pd.DataFrame({"image": _b64_images(tiny_images[:1])}))


def _not_json(constant: str):
    raise AssertionError(f"the response holds {constant}, which is not JSON")


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(model_dir, tiny_images, tiny_scores, tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_dir, "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    images = _b64_images(tiny_images[:3])
    bodies = {"dataframe_split": {"columns": ["image"], "data": [[b] for b in images] + [["%%%"]]},
              "dataframe_records": [{"image": b} for b in images] + [{"image": "%%%"}],
              "inputs": {"image": images + ["%%%"]}}
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, timeout=180)
        for key, body in bodies.items():
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                             data=json.dumps({key: body}).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as resp:
                rows = json.loads(resp.read(), parse_constant=_not_json)["predictions"]  # strict JSON: no NaN
            assert len(rows) == 4, key
            assert rows[3]["score"] is None and rows[3]["is_fake"] is None, key  # not scored is not "real"
            np.testing.assert_allclose([r["score"] for r in rows[:3]], list(tiny_scores.values())[:3], rtol=1e-5)
            assert rows[3]["error"].startswith("bad base64") and rows[0]["error"] == ""
            assert rows[3]["verdict"] == "error" and {r["verdict"] for r in rows[:3]} <= {"fake", "real", "uncertain"}
            assert all(r["model"] == model_dir and r["encoder"] == "spectrum:v1" for r in rows)  # saved outside a run

        def post(body: dict) -> list[dict]:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                             data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as resp:
                return json.loads(resp.read())["predictions"]

        # a URL is not fetched by default (no requests to addresses a client picks)
        (row,) = post({"inputs": {"image": [f"http://127.0.0.1:{free_port()}/x.png"]}})
        assert row["verdict"] == "error" and row["error"].startswith("urls_not_allowed")
        with pytest.raises(urllib.error.HTTPError) as refused:  # a GenDet model has no masks: 400, not dropped
            post({"inputs": {"image": images[:1]}, "params": {"masks": True}})
        assert refused.value.code == 400 and b"masks need a GAMMA model" in refused.value.read()
        too_many = json.dumps({"inputs": {"image": ["%%%"] * (pyfunc.SERVING_LIMITS["max_images"] + 1)}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST", data=too_many,
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 400 and b"send them in several requests" in refused.value.read()
    finally:
        stop_process(proc)
        log.close()


def test_pins_drop_local_version_labels():
    assert pyfunc.pin("torch", "2.14.1+cu130") == "torch==2.14.1"
    assert pyfunc.pin("numpy", "2.4.6") == "numpy==2.4.6"
    assert pyfunc.pin("torchvision", "0.29.1+cpu") == "torchvision==0.29.1"


def test_a_model_refuses_encoder_weights_other_than_its_features(tiny_detector_dir):
    """A detector records the weights digest of its training features' variant key; scoring with
    other weights (a file replaced since, a hub copy) would give other features: one line."""
    from gendet import GendetError
    from gendet.serve.scorer import ImageScorer

    det = Detector.load(tiny_detector_dir)
    det.encoder_weights_digest = "builtin"  # spectrum:v1's own: accepted
    assert ImageScorer.from_detector(det).encoder.name == "spectrum:v1"
    det.encoder, det.encoder_weights_digest = "open_clip:GenDet-Debug-ViT/none", "sha256:" + "0" * 64
    with pytest.raises(GendetError) as err:
        ImageScorer.from_detector(det)
    assert "not the encoder weights the detector was trained on" in str(err.value) and "\n" not in str(err.value)


def test_serving_code_is_the_import_closure_of_the_model_code():
    """SERVING_CODE must hold every gendet module the served model imports, lazily or not."""
    import grimp

    graph = grimp.build_graph("gendet")
    needed = {"gendet.serve.pyfunc_model"} | graph.find_upstream_modules("gendet.serve.pyfunc_model")
    needed |= {m.rsplit(".", 1)[0] for m in needed if m.count(".") > 1}  # their packages' __init__

    def shipped(module: str) -> bool:
        rel = module.split(".", 1)[1].replace(".", "/") if "." in module else "__init__"
        return any(rel == s.removesuffix(".py") or rel.startswith(s + "/") or f"{rel}/__init__" == s.removesuffix(".py")
                   for s in pyfunc.SERVING_CODE)

    assert sorted(m for m in needed if m.startswith("gendet") and not shipped(m)) == []
