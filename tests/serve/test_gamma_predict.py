"""Scoring images with a GAMMA model: fake_fraction, masks on the image's own pixels, ``gendet
predict --mask-dir`` and the MLflow pyfunc frame (gendet/serve/gamma_scorer.py, masks.py)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from gendet import GendetError
from gendet.encoders.registry import load_encoder
from gendet.encoders.tokens import coarsen, geometry_mask
from gendet.method.gamma.config import GammaConfig
from gendet.method.gamma.detector import GammaDetector
from gendet.method.gamma.networks import GammaNet
from gendet.serve import predict, pyfunc
from gendet.serve.loading import load_detector
from gendet.serve.masks import image_mask, seen_box, seen_fraction
from pipelines import cli

REPLY = {"verdict", "probability", "band", "model", "encoder", "encoder_digest", "error", "score", "is_fake", "threshold"}


def _gamma(encoder_name: str, grid=None, seed: int = 0, seg_bias: float | None = None, token_dim: int | None = None,
           **cfg) -> GammaDetector:
    """A random-init GAMMA model over ``encoder_name``'s tokens (on ``grid``, default its native one;
    ``token_dim``, default the encoder's); ``seg_bias`` makes head 1 constant (every token's
    P(generated) = sigmoid(seg_bias))."""
    encoder = load_encoder(encoder_name)
    torch.manual_seed(seed)
    net = GammaNet(token_dim or encoder.token_dim, grid or encoder.token_grid, 3,
                   GammaConfig(**{**{"width": 16, "layers": 1, "heads": 2}, **cfg})).eval()
    if seg_bias is not None:
        with torch.no_grad():
            net.seg_out.weight.zero_()
            net.seg_out.bias.fill_(seg_bias)
    return GammaDetector(net=net, sources=("camera", "a", "b"), encoder=encoder_name,
                         preprocess_hash=encoder.preprocess_hash, encoder_weights_digest="builtin")


@pytest.fixture(scope="module")
def gamma_dir(tmp_path_factory) -> str:
    return _gamma("spectrum:v1").save(str(tmp_path_factory.mktemp("gamma") / "model"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """PNG/JPEG of sizes under, at and over spectrum:v1's 128 px canvas."""
    folder = tmp_path_factory.mktemp("gamma_images")
    rng = np.random.default_rng(1)
    paths = []
    for i, (w, h) in enumerate([(40, 56), (200, 150), (128, 128), (90, 260)]):
        path = folder / f"pic{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _direct(model_dir: str, paths, encoder=None) -> dict[str, np.ndarray]:
    """``GammaDetector.localize`` of tokens made here, without gendet.serve."""
    det = GammaDetector.load(model_dir)
    encoder = encoder or load_encoder(det.encoder)
    batch = torch.stack([encoder.preprocess(Image.open(p).convert("RGB")) for p in paths])
    tokens = encoder.tokens(batch)
    if tuple(encoder.token_grid) != det.grid:
        tokens = coarsen(tokens, encoder.token_grid, det.grid)
    return det.localize(tokens)


def _seen(mask: np.ndarray, path, encoder_name: str = "spectrum:v1") -> float:
    """The share of the pixels the encoder saw (its crop of the image) that ``mask`` marks."""
    encoder = load_encoder(encoder_name)
    with Image.open(path) as im:
        canvas = encoder.preprocessor.pixels(im.convert("RGB")).shape[1:]
        return seen_fraction(mask, seen_box(encoder.preprocess_cfg, im.size, canvas[::-1]))


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_predict_mask_dir_writes_masks_and_overlays_of_each_images_size(gamma_dir, images, tmp_path, capsys):
    out, masks = tmp_path / "scores", tmp_path / "masks"
    assert cli.main(["predict", "--model", gamma_dir, *map(str, images), str(tmp_path / "gone.png"),
                     "--mask-dir", str(masks), "--out", str(out)]) == 0
    rows = _lines((out / "predictions.jsonl").read_text())
    direct = _direct(gamma_dir, images)
    for row, path, score in zip(rows, images, direct["score"]):
        assert set(row) == REPLY | {"path", "fake_fraction", "mask"} and row["verdict"] in ("fake", "real", "uncertain")
        assert row["score"] == pytest.approx(score, rel=1e-5)
        assert row["mask"] == str(masks / f"{path.stem}.mask.png")
        mask = _png(row["mask"])
        w, h = Image.open(path).size
        assert mask.shape == (h, w) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert row["fake_fraction"] == pytest.approx(_seen(mask == 255, path), abs=1e-12)
        tinted = Image.open(masks / f"{path.stem}.overlay.png")
        assert tinted.size == (w, h) and tinted.mode == "RGB"
    assert 0 < np.mean([r["fake_fraction"] for r in rows[:4]]) < 1  # random heads: some pixels each way
    assert rows[4]["path"] == str(tmp_path / "gone.png") and rows[4]["error"] == "not found"
    assert rows[4]["verdict"] == "error" and rows[4]["probability"] is None and "fake_fraction" not in rows[4]
    assert sorted(p.name for p in masks.iterdir()) == sorted(f"{p.stem}.{k}.png" for p in images for k in ("mask", "overlay"))
    assert capsys.readouterr().out == ""


def test_without_mask_dir_each_line_has_the_fake_fraction_only(gamma_dir, images, tmp_path):
    rows = predict.predict(gamma_dir, [str(p) for p in images], batch_size=3)
    assert all(set(r) == REPLY | {"path", "fake_fraction"} for r in rows)
    with_masks = predict.predict(gamma_dir, [str(p) for p in images], mask_dir=str(tmp_path / "m"))
    assert [r["fake_fraction"] for r in rows] == [r["fake_fraction"] for r in with_masks]


def test_shared_file_names_get_distinct_masks(gamma_dir, images, tmp_path):
    (tmp_path / "a").mkdir()
    twin = tmp_path / "a" / images[1].name
    twin.write_bytes(images[1].read_bytes())
    rows = predict.predict(gamma_dir, [str(images[1]), str(twin)], mask_dir=str(tmp_path / "m"))
    assert rows[0]["mask"].endswith(f"/{images[1].stem}.mask.png")
    assert rows[1]["mask"] != rows[0]["mask"] and Path(rows[1]["mask"]).name.startswith(images[1].stem + "-")
    assert (_png(rows[0]["mask"]) == _png(rows[1]["mask"])).all()


def test_a_genDet_model_with_mask_dir_is_refused_in_one_line_before_any_image(tiny_detector_dir, tmp_path, capsys):
    code = cli.main(["predict", "--model", tiny_detector_dir, str(tmp_path / "never-read.png"),
                     "--mask-dir", str(tmp_path / "m")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and not (tmp_path / "m").exists()
    assert len(captured.err.strip().splitlines()) == 1
    assert "masks need a GAMMA model" in captured.err and "train-gamma" in captured.err
    no_heads = _gamma("spectrum:v1", seg_heads=False, reverse_attention=False).save(str(tmp_path / "noseg"))
    with pytest.raises(GendetError, match="without segmentation heads"):
        predict.load_scorer(no_heads, masks=True)
    rows = predict.predict(no_heads, [str(tmp_path / "never-read.png")])
    assert [(r["path"], r["verdict"], r["error"]) for r in rows] == [(str(tmp_path / "never-read.png"), "error", "not found")]


def test_genDet_lines_are_unchanged_and_verbs_for_pooled_features_refuse_gamma(tiny_detector_dir, gamma_dir, images):
    rows = predict.predict(tiny_detector_dir, [str(images[0])])
    assert set(rows[0]) == REPLY | {"path"}  # no fake_fraction: GenDet does not localize
    with pytest.raises(GendetError, match="a GAMMA model"):
        load_detector(gamma_dir)


def test_a_constant_head_masks_exactly_what_the_encoder_saw(images, tmp_path):
    """Head 1 at P = 1 everywhere: the mask is the region the encoder's center crop took from the
    image (spectrum:v1 crops 128 px from a 200x150 image: 128 x 128 at (36, 11)); at P = 0: nothing."""
    every = _gamma("spectrum:v1", seg_bias=10.0).save(str(tmp_path / "all"))
    none = _gamma("spectrum:v1", seg_bias=-10.0).save(str(tmp_path / "none"))
    row = predict.predict(every, [str(images[1])], mask_dir=str(tmp_path / "m"))[0]
    mask = _png(row["mask"]) == 255
    expected = np.zeros((150, 200), bool)
    expected[11:139, 36:164] = True
    # fake_fraction is over what the model saw: all of it, though the mask covers 55 % of the image
    assert (mask == expected).all() and row["fake_fraction"] == 1.0 and (mask.mean() == pytest.approx(128 * 128 / (200 * 150)))
    small = predict.predict(every, [str(images[0])])[0]  # 40x56: upscaled to 128x179, crop covers 40 x 40 px
    assert small["fake_fraction"] == 1.0
    assert all(r["fake_fraction"] == 0.0 for r in predict.predict(none, [str(p) for p in images]))


@pytest.mark.parametrize("encoder_name,size", [("spectrum:v1", (200, 150)), ("spectrum:v1", (40, 56)),
                                               ("spectrum:v2", (100, 90)), ("spectrum:v2", (300, 260)),
                                               ("spectrum:v2", (50, 70)), ("open_clip:GenDet-Debug-ViT/none", (60, 45))])
def test_image_masks_go_back_through_the_geometry_to_the_canvas_mask(encoder_name, size):
    """The inverse geometry: a canvas mask brought to the image and put through the encoder's
    preprocessing again (``geometry_mask``, what training targets are made with) is the canvas mask
    again, exactly when no resampling is involved; the tile spectrum:v2 reads is its top-left one."""
    from gendet.encoders.registry import load_preprocess

    pre = load_preprocess(encoder_name)
    w, h = size
    canvas = pre.pixels(Image.new("RGB", size)).shape[1:]
    crop = {(100, 90): 64, (300, 260): 256, (50, 70): 64}.get(size, canvas[0]) if encoder_name == "spectrum:v2" else canvas[0]
    rng = np.random.default_rng(0)
    on_canvas = np.zeros(canvas, bool)
    for _ in range(3):  # a few rectangles inside the tile that holds the image
        y0, x0 = rng.integers(0, crop - 8, 2)
        on_canvas[y0:y0 + rng.integers(4, crop - y0), x0:x0 + rng.integers(4, crop - x0)] = True
    back = image_mask(on_canvas, pre.preprocess_cfg, (w, h))
    assert back.shape == (h, w)
    again = geometry_mask(pre, back)[:crop, :crop] > 0.5
    resampled = min(w, h) < {"spectrum:v1": 128, "spectrum:v2": 64}.get(encoder_name, 0) or encoder_name.startswith("open")
    agree = (again == on_canvas[:crop, :crop]).mean()
    assert agree == 1.0 if not resampled else agree > 0.9


def test_a_model_on_a_coarser_grid_gets_pooled_tokens(images, tmp_path):
    """open_clip's debug ViT gives 4x4 tokens; a model trained on a 2x2 store gets them area-pooled."""
    name = "open_clip:GenDet-Debug-ViT/none"
    model = _gamma(name, grid=(2, 2))
    model.encoder_weights_digest = "random-init"
    model_dir = model.save(str(tmp_path / "coarse"))
    scorer = predict.load_scorer(model_dir)  # the debug ViT's random weights differ per load: compare with its own
    rows = predict.predict(scorer, [str(p) for p in images], mask_dir=str(tmp_path / "m"))
    np.testing.assert_allclose([r["score"] for r in rows], _direct(model_dir, images, scorer.encoder)["score"], rtol=1e-5)
    assert all(_png(r["mask"]).shape == Image.open(p).size[::-1] for r, p in zip(rows, images))
    wrong = _gamma("spectrum:v1").save(str(tmp_path / "wrong"))  # spectrum tokens: refused with an open_clip encoder
    args = json.loads(Path(wrong, "gamma.json").read_text())
    args.update(encoder=name, encoder_weights_digest="random-init", preprocess_hash=load_encoder(name).preprocess_hash)
    Path(wrong, "gamma.json").write_text(json.dumps(args))
    with pytest.raises(GendetError, match="load the encoder the model was trained on"):
        predict.load_scorer(wrong)


def test_a_model_of_0_5_spectrum_tokens_still_predicts(images, tmp_path):
    """A GAMMA model saved by 0.5 reads 96 measurements per token; today's spectrum tokens start with
    them, so predict feeds it those columns: the same scores as the model on them directly."""
    from gendet.encoders.tokens import PATCH_DIM

    encoder = load_encoder("spectrum:v1")
    model_dir = _gamma("spectrum:v1", token_dim=PATCH_DIM, seg_context=0).save(str(tmp_path / "old"))
    rows = predict.predict(predict.load_scorer(model_dir), [str(p) for p in images])
    batch = torch.stack([encoder.preprocess(Image.open(p).convert("RGB")) for p in images])
    direct = GammaDetector.load(model_dir).localize(encoder.tokens(batch)[..., :PATCH_DIM])["score"]
    np.testing.assert_allclose([r["score"] for r in rows], direct, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- served model

@pytest.fixture(scope="module")
def gamma_model_dir(tmp_path_factory, gamma_dir) -> str:
    return pyfunc.save_detector_model(gamma_dir, str(tmp_path_factory.mktemp("gamma_pyfunc") / "model"))


def test_saved_gamma_model_records_its_kind_and_signature(gamma_model_dir, gamma_dir):
    mlmodel = yaml.safe_load(Path(gamma_model_dir, "MLmodel").read_text())
    assert mlmodel["metadata"]["method"] == "gamma" and mlmodel["metadata"]["token_grid"] == [8, 8]
    assert mlmodel["metadata"]["masks"] is True and mlmodel["metadata"]["sources"] == ["camera", "a", "b"]
    outputs = [c["name"] for c in json.loads(mlmodel["signature"]["outputs"])]
    assert outputs == [*pyfunc.REPLY_COLUMNS, "fake_fraction", "mask_png"]
    assert [p["name"] for p in json.loads(mlmodel["signature"]["params"])] == ["masks"]
    assert GammaDetector.load(str(Path(gamma_model_dir, "artifacts", "detector"))).args() == GammaDetector.load(gamma_dir).args()
    assert predict.load_scorer(gamma_model_dir).has_masks  # a local MLflow model dir loads for predict too


def test_pyfunc_frame_with_and_without_masks(gamma_model_dir, gamma_dir, images):
    model = mlflow.pyfunc.load_model(gamma_model_dir)
    frame = pd.DataFrame({"image": [pyfunc.b64(p.read_bytes()) for p in images] + ["%%%"]})
    plain = model.predict(frame)
    assert list(plain.columns) == [*pyfunc.REPLY_COLUMNS, "fake_fraction"]
    n = len(images)
    np.testing.assert_allclose(plain["score"][:n].astype(float), _direct(gamma_dir, images)["score"], rtol=1e-5)
    assert plain["fake_fraction"][n] is None and plain["error"][n].startswith("bad base64")
    with_masks = model.predict(frame, params={"masks": True})
    assert list(with_masks.columns) == [*plain.columns, "mask_png"] and with_masks["mask_png"][n] is None
    for i, path in enumerate(images):
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(with_masks["mask_png"][i]))))
        assert mask.shape == Image.open(path).size[::-1]
        assert with_masks["fake_fraction"][i] == plain["fake_fraction"][i] == pytest.approx(_seen(mask == 255, path))


def test_a_genDet_served_model_refuses_masks_instead_of_dropping_them(tiny_detector_dir, tmp_path, images):
    """Until 0.9 a GenDet model's signature declared no params: MLflow dropped ``masks`` and answered
    200 without them. Both methods now share the params schema, so the model sees the ask and refuses."""
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(pyfunc.save_detector_model(tiny_detector_dir, str(tmp_path / "gendet")))
    frame = pd.DataFrame({"image": [pyfunc.b64(images[0].read_bytes())]})
    assert list(model.predict(frame).columns) == pyfunc.REPLY_COLUMNS
    with pytest.raises(MlflowException, match="masks need a GAMMA model"):
        model.predict(frame, params={"masks": True})


@pytest.mark.slow
def test_mlflow_models_serve_answers_masks_over_http(gamma_model_dir, images, tmp_path):
    """The params travel over HTTP: ``{"params": {"masks": true}}`` beside the frame."""
    import subprocess
    import sys
    import urllib.request

    from conftest import free_port, stop_process, wait_http

    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", gamma_model_dir, "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    split = {"columns": ["image"], "data": [[pyfunc.b64(p.read_bytes())] for p in images[:2]] + [["%%%"]]}
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, timeout=180)
        answers = []
        for extra in ({}, {"params": {"masks": True}}):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                             data=json.dumps({"dataframe_split": split, **extra}).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as resp:
                answers.append(json.loads(resp.read())["predictions"])
        plain, masked = answers
        assert "mask_png" not in plain[0] and plain[2]["fake_fraction"] is None and plain[2]["score"] is None
        assert masked[2]["mask_png"] is None
        for row, path in zip(masked[:2], images):
            mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(row["mask_png"]))))
            assert mask.shape == Image.open(path).size[::-1]
            assert row["fake_fraction"] == pytest.approx(_seen(mask == 255, path))
    finally:
        stop_process(proc)
        log.close()


@pytest.mark.slow
def test_a_logged_and_registered_gamma_model_is_scored_by_its_uris(mlflow_server, monkeypatch, gamma_dir, images):
    """``log_detector`` takes a GAMMA model (what a GAMMA training run logs), ``register`` versions it,
    and ``runs:/RUN/detector`` and ``models:/NAME@challenger`` load it with its masks."""
    from mlflow.tracking import MlflowClient

    from gendet.mlops import registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    try:
        mlflow.set_experiment("gamma-serve-test")
        with mlflow.start_run() as run:
            info = pyfunc.log_detector(GammaDetector.load(gamma_dir))
        version = registry.register(info.model_uri, "gamma-serve-test", client=MlflowClient(mlflow_server))
        expected = predict.predict(gamma_dir, [str(images[1])])
        uris = (f"runs:/{run.info.run_id}/detector", f"models:/gamma-serve-test/{version.version}",
                "models:/gamma-serve-test@challenger")
        for uri in uris:
            row = predict.predict(uri, [str(images[1])])[0]
            assert row["score"] == pytest.approx(expected[0]["score"]) and row["fake_fraction"] == expected[0]["fake_fraction"]
    finally:
        mlflow.set_tracking_uri(None)


def test_score_gives_gamma_rows_their_fake_fraction_and_writes_their_masks(gamma_dir, images, tmp_path):
    import pyarrow.parquet as pq

    from pipelines.score import ScoreJob, run

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in images:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    out, masks = tmp_path / "scores", tmp_path / "masks"
    run(ScoreJob(source=str(folder), out=str(out), model=gamma_dir, local=True, mask_dir=str(masks)))
    rows = {r["id"]: r for p in out.glob("*.parquet") for r in pq.read_table(p).to_pylist()}
    expected = {Path(r["path"]).name: r for r in predict.predict(gamma_dir, [str(p) for p in images])}
    assert rows["broken.png"]["verdict"] == "error" and rows["broken.png"]["fake_fraction"] is None
    assert rows["broken.png"]["mask"] == ""
    for name, want in expected.items():
        assert rows[name]["fake_fraction"] == pytest.approx(want["fake_fraction"], abs=1e-6)
        mask = _png(rows[name]["mask"])
        assert mask.shape == Image.open(folder / name).size[::-1] and set(np.unique(mask)) <= {0, 255}
