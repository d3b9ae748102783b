"""Overlays of predicted masks (gendet/eval/overlays.py) and the report section that shows them."""

import io

import numpy as np
import pytest
from PIL import Image

from gendet.eval import overlays, plots, report


def _image(w=40, h=30):
    return Image.fromarray(np.full((h, w, 3), 100, np.uint8))


def _square(w=40, h=30):
    mask = np.zeros((h, w), bool)
    mask[10:20, 5:25] = True
    return mask


def test_overlay_tints_inside_outlines_the_edge_and_leaves_the_rest():
    out = np.asarray(overlays.overlay(_image(), _square()))
    assert out.shape == (30, 40, 3)
    assert (out[0, 0] == 100).all() and (out[25, 35] == 100).all()  # outside: the image
    inside = out[15, 15]
    assert inside[0] > 150 and inside[1] < 100 and inside[2] < 100  # tinted red, image still under it
    assert tuple(out[10, 15]) == overlays.TINT and tuple(out[15, 5]) == overlays.TINT  # the outline: solid
    assert tuple(out[15, 15]) != overlays.TINT


def test_overlay_takes_arrays_and_png_masks_and_refuses_a_wrong_size():
    png = io.BytesIO()
    Image.fromarray(_square().astype(np.uint8) * 255).save(png, format="PNG")
    from_png = overlays.overlay(np.asarray(_image()), np.asarray(Image.open(png)))
    floats = overlays.overlay(np.asarray(_image()) / 255.0, _square().astype(float))
    assert np.array_equal(np.asarray(from_png), np.asarray(overlays.overlay(_image(), _square())))
    assert np.array_equal(np.asarray(floats), np.asarray(from_png))
    assert not (np.asarray(overlays.overlay(_image(), np.zeros((30, 40), bool))) != 100).any()  # empty mask: the image
    with pytest.raises(ValueError, match=r"not the image's size \(40, 30\)"):
        overlays.overlay(_image(), np.zeros((40, 30), bool))


def test_overlay_grid_has_a_row_per_image_and_titles_the_shares(tmp_path):
    pred = _square()
    fig = overlays.overlay_grid([_image(), _image(20, 20)], [_square(), None], [pred, np.ones((20, 20), bool)],
                                ["inpaint / a", "real"])
    axes = fig.get_axes()
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes] == ["inpaint / a", "true: 17%", "predicted: 17%", "real", "true: no mask",
                                               "predicted: 100%"]
    png = plots.save_png(fig, str(tmp_path / "overlays.png"))
    assert Image.open(png).format == "PNG"
    grid = np.zeros((3, 4), np.float32)  # a token grid: the top-left token's quarter-by-third of the image
    grid[0, 0] = 0.9
    fig = overlays.overlay_grid([_image()], [grid], [np.full((3, 4), 0.2)], ["tokens"])
    true_title, pred_title = [ax.get_title() for ax in fig.get_axes()][1:]
    assert 3 <= int(true_title.removeprefix("true: ").rstrip("%")) <= 9 and pred_title == "predicted: 0%"  # bilinear edge
    with pytest.raises(ValueError, match="one of each per image"):
        overlays.overlay_grid([_image()], [], [pred])


def test_the_report_section_links_the_overlay_grid_relative_to_the_report(tmp_path):
    (tmp_path / "plots").mkdir()
    png = plots.save_png(overlays.overlay_grid([_image()], [_square()], [_square()]), str(tmp_path / "plots" / "o.png"))
    heading, body = report.overlay_section(png, str(tmp_path), note="GAMMA on 1 partial fake")
    assert heading == "Where the model says it is fake"
    assert body == "![o.png](plots/o.png)\n\nGAMMA on 1 partial fake"
    text = open(report.write(str(tmp_path / "r.md"), [(heading, body)])).read()
    assert "## Where the model says it is fake\n\n![o.png](plots/o.png)" in text


def test_the_demo_report_shows_the_section_only_when_given_an_overlay_grid(tmp_path):
    import json

    rep = {"subsets": {"seen": {"acc": 1.0, "ap": 1.0, "acc_calibrated": 1.0}}, "target_fpr": 0.05}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "gendet.json").write_text(json.dumps(rep))
    png = plots.save_png(overlays.overlay_grid([_image()], [None], [_square()]), str(tmp_path / "overlays.png"))
    common = dict(train_family="seen", new_family="new", zoo={"photos": 1, "families": {}}, extracted={},
                  summary={"run_id": "r", "model_uri": "m"}, by_degrade={"": {"gendet": rep}}, predictions=[],
                  predictions_model="m", refresh={"new_shards": [], "alert": False, "subsets": {}}, times={})
    with_grid = open(report.write_demo_report(str(tmp_path), report.DemoReport(
        **common, overlays=png, overlays_note="GAMMA, 1 partial fake"))[0]).read()
    assert "## Where the model says it is fake\n\n![overlays.png](overlays.png)\n\nGAMMA, 1 partial fake" in with_grid
    assert with_grid.index("## Plots") < with_grid.index("## Where the model says it is fake") < with_grid.index("## Registry")
    without = open(report.write_demo_report(str(tmp_path), report.DemoReport(**common))[0]).read()
    assert "Where the model says it is fake" not in without
