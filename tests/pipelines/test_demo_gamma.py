"""The demo's GAMMA step (``pipelines.demo_gamma``, ``gendet demo --gamma``) on a two-family small
world, a real local Ray and the demo's SQLite MLflow store: manipulations of the training family
only, the token variant beside the pooled store, train-gamma registered as ``gendet-gamma``, pixel
metrics for inpaint_f8, the overlay grid in MLflow and in the report. (``demo --small`` runs without
it: the CI suite's time, README.)"""

import json

import pytest
from mlflow import MlflowClient

from gendet.data.shards import usable_samples
from gendet.eval.report import gamma_sections, overlay_section, write
from gendet.features.tokens import resolve_token_variant
from pipelines import _demo_gamma as demo_gamma
from pipelines import demo

pytestmark = pytest.mark.slow

TINY = {"width": 16, "layers": 1, "heads": 2, "epochs": 2, "batch_size": 16}


def test_demo_gamma_step(ray_local, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(demo_gamma, "GAMMA_SETTINGS", TINY)
    monkeypatch.setattr(demo_gamma, "PER_IMAGE", 1)  # the suite's time: the demo draws 5 per real
    out, family = tmp_path / "demo", demo.TRAIN_FAMILY
    shards, features = out / "shards", out / "features"
    demo.zoo_shards(str(shards), [family, demo_gamma.MASKED_FAMILY], small=True)
    got = demo_gamma.run_gamma(str(out), str(shards), str(features), family, demo.ENCODER, 1)

    # manipulations of the training family's reals; generated regions only by the training family
    manipulated = [meta for url in sorted((out / "manipulated").glob("*.tar")) for _, meta, _, _ in usable_samples(str(url))]
    assert manipulated and len(manipulated) == got["manipulated"]["fake"]
    assert {m["manipulation"] for m in manipulated} <= set(demo_gamma.KINDS)
    assert {m["family"] for m in manipulated if m["manipulation"] in ("splice", "inpaint")} == {family}
    assert resolve_token_variant(str(features), encoder=demo.ENCODER).token_grid == (8, 8)

    metrics = got["metrics"]
    assert {family, demo_gamma.MASKED_FAMILY} <= set(metrics["subsets"]) and got["train_subsets"][0] == family
    masked = metrics["subsets"][demo_gamma.MASKED_FAMILY]
    assert masked["n_masked"] > 0 and masked["pixel_f1"] is not None and masked["pixel_iou"] is not None
    assert masked["acc"] is not None and masked["ap"] is not None

    # registered under its own name in the demo's store, the overlays logged to its run
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    gate = got["summary"]["gate"]
    version = client.get_model_version_by_alias(demo_gamma.MODEL_NAME, "challenger")
    assert str(version.version) == gate["version"] and version.run_id == got["summary"]["run_id"]
    assert {m.name for m in client.search_registered_models()} == {demo_gamma.MODEL_NAME}  # GenDet's `gendet` untouched
    assert "plots/gamma_demo_overlays.png" in {a.path for a in client.list_artifacts(version.run_id, "plots")}
    assert client.get_run(version.run_id).info.artifact_uri.startswith((out / "mlartifacts").as_uri())

    png = out / "plots" / "gamma_demo_overlays.png"
    assert got["overlays"] == str(png) and png.stat().st_size > 5000
    assert len(list((out / "overlays" / "masks").glob("*.mask.png"))) == demo_gamma.OVERLAYS

    # the report's sections: GAMMA's row beside GenDet's (here a stand-in) and the partial fakes' table
    gendet = {**metrics, "subsets": {s: metrics["subsets"][s] for s in (family, demo_gamma.MASKED_FAMILY)}}
    sections = [*gamma_sections(got, gendet, [family]), overlay_section(got["overlays"], str(out), got["overlays_note"])]
    text = (out / "report.md").read_text() if write(str(out / "report.md"), sections) else ""
    assert f"| gamma | {100 * metrics['subsets'][family]['acc']:.1f} |" in text
    pixel_row = next(line for line in text.splitlines() if line.startswith(f"| {demo_gamma.MASKED_FAMILY} |"))
    assert f"{100 * masked['pixel_iou']:.1f}" in pixel_row
    assert "![gamma_demo_overlays.png](plots/gamma_demo_overlays.png)" in text
    assert f"`{demo_gamma.MODEL_NAME}` version {gate['version']}" in text
    assert json.loads(json.dumps(got["seconds"]))["train_gamma"] > 0
