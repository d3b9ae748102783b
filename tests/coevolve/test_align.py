"""Detector-informed alignment: φ matches extraction, the loss pulls fakes toward reals, weights
and lineage round-trip, fine-tuned generators write shards, bad configs fail in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gendet import GendetError
from gendet.coevolve.align import AlignConfig, align_generator, photo_crops
from gendet.coevolve.lineage import lineage_path, load_aligned, save_aligned
from gendet.coevolve.representation import Representation, quantise, spectrum_canvas
from gendet.data.shards import iter_tar_members, list_shards
from gendet.encoders.registry import load_encoder
from gendet.method.gendet.detector import Detector, build_method_nets
from gendet.method.gendet.networks import Arch
from gendet.zoo.regenerate import to_tensor
from gendet.zoo.shards import ZooShardsConfig, build_generator_shards
from gendet.zoo.train import load_or_train

torch.set_num_threads(2)


def tiny_detector(encoder: str = "spectrum:v2", method: str = "gendet") -> Detector:
    torch.manual_seed(0)
    dim = load_encoder(encoder).dim
    arch = Arch(feature_dim=dim)
    return Detector(method=method, arch=arch, nets=build_method_nets(method, arch), encoder=encoder, threshold=0.5,
                    target_fpr=0.05)


@pytest.fixture(scope="module")
def crops():
    cfg = AlignConfig(family="ae_deconv_f4", crops_per_photo=1, eval_crops_per_photo=1)
    train, held = photo_crops(cfg)
    return train[:12], held[:6]


@pytest.mark.parametrize("version, tolerance", [("v2", 1e-4), ("v1", 0.05)])
def test_phi_features_match_the_extraction_path_and_carry_gradients(crops, version, tolerance):
    encoder = load_encoder(f"spectrum:{version}")
    images = crops[0][:4]
    extracted = encoder(torch.stack([encoder.preprocess(Image.fromarray(im)) for im in images]))
    phi = Representation(tiny_detector(f"spectrum:{version}"))
    x = to_tensor(images).requires_grad_(True)
    feats = phi.features(x)
    assert (feats - extracted).abs().mean().item() < tolerance
    phi(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum().item() > 0


def test_quantise_rounds_forward_and_passes_gradients():
    x = torch.tensor([0.1234, 0.5, 0.9999], requires_grad=True)
    y = quantise(x)
    assert torch.allclose(y * 255, (y * 255).round())
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))
    assert spectrum_canvas(torch.rand(1, 3, 64, 64), "v2").shape == (1, 3, 256, 256)


def test_alignment_pulls_fakes_toward_their_photos_and_keeps_fidelity(crops):
    cfg = AlignConfig(family="ae_deconv_f4", steps=6, batch_size=3, lr=2e-3, align_weight=5.0, seed=1)
    result = align_generator(cfg, tiny_detector(), crops=(crops[0], crops[1][:4]))
    assert len(result.history) == 6
    assert result.after["phi_distance"] < result.before["phi_distance"]
    first, last = result.history[0]["align"], np.mean([h["align"] for h in result.history[-3:]])
    assert last < first
    assert result.after["psnr"] > 18.0, result.after  # a generator still: bounded by the fidelity term
    assert 0.0 <= result.after["caught"] <= 1.0 and 0.0 < result.after["ssim"] <= 1.0


def test_alignment_against_a_detector_that_catches_the_family_lowers_what_it_catches():
    """A linear probe trained on these photos' crops against the family's regenerations catches most of
    its fakes; aligning the generator against it (phi = the probe's features) lowers that share on
    held-out photos, while the generator keeps its fidelity."""
    from gendet.features.sources import TensorSource
    from gendet.method.gendet.config import preset
    from gendet.method.gendet.trainer import train_all
    from gendet.zoo.config import family_config
    from gendet.zoo.regenerate import regenerate

    cfg = AlignConfig(family="ae_deconv_f4", crops_per_photo=2, eval_crops_per_photo=1, steps=30, batch_size=4,
                      lr=2e-3, align_weight=2.0, seed=0)
    train, held = photo_crops(cfg)
    base = load_or_train("ae_deconv_f4", progress=False)[0]
    phi = Representation(tiny_detector(method="linear_probe"))
    x = np.concatenate([phi.store_features(train), phi.store_features(regenerate(base, family_config("ae_deconv_f4"), train))])
    y = np.r_[np.zeros(len(train)), np.ones(len(train))]
    torch.manual_seed(0)
    probe = train_all(preset("debug", methods=("linear_probe",), train_subsets=("x",), classifier_epochs=30),
                      TensorSource(x, y, batch_size=32), calibration=TensorSource(x, y, batch_size=512),
                      encoder="spectrum:v2").detectors["linear_probe"]
    result = align_generator(cfg, probe, model=base, crops=(train, held))
    assert result.before["caught"] >= 0.6, result.before  # the family is caught before
    assert result.after["caught"] <= result.before["caught"] - 0.2, (result.before, result.after)
    assert result.after["psnr"] > 18.0, result.after


def test_alignment_of_sdedit_trains_through_the_ddim_trajectory(crops):
    cfg = AlignConfig(family="sdedit", steps=2, batch_size=2, lr=1e-3, seed=0)
    base = load_or_train("sdedit", progress=False)[0]
    result = align_generator(cfg, tiny_detector(), model=base, crops=(crops[0], crops[1][:2]))
    changed = [not torch.equal(a, b) for a, b in zip(base.state_dict().values(), result.model.state_dict().values())]
    assert any(changed)
    assert all(not p.requires_grad for p in result.model.parameters())


def test_decoder_only_leaves_the_encoder_untouched(crops):
    cfg = AlignConfig(family="ae_deconv_f4", steps=2, batch_size=2, train="decoder")
    base = load_or_train("ae_deconv_f4", progress=False)[0]
    tuned = align_generator(cfg, tiny_detector(), model=base, crops=(crops[0], crops[1][:2])).model
    for (name, a), b in zip(base.state_dict().items(), tuned.state_dict().values()):
        assert torch.equal(a, b) == name.startswith("encoder."), name


def test_weights_and_lineage_round_trip(tmp_path):
    model = load_or_train("ae_deconv_f4", progress=False)[0]
    path = str(tmp_path / "g" / "generator.safetensors")
    written = save_aligned(model, "ae_deconv_f4", path, {"detector": {"uri": "models:/gendet/3", "digest": "abc"}})
    loaded, lineage = load_aligned(path)
    assert lineage == written == json.load(open(lineage_path(path)))
    assert lineage["detector"]["uri"] == "models:/gendet/3" and lineage["family"] == "ae_deconv_f4"
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    lineage["weights_digest"] = "0" * 64
    open(lineage_path(path), "w").write(json.dumps(lineage))
    with pytest.raises(GendetError, match="do not match the digest"):
        load_aligned(path)
    with pytest.raises(GendetError, match=r"\.safetensors"):
        save_aligned(model, "ae_deconv_f4", str(tmp_path / "g.pt"), {})


def test_fine_tuned_generator_writes_shards_under_its_own_subset(tmp_path):
    model = load_or_train("ae_deconv_f4", progress=False)[0]
    cfg = ZooShardsConfig(crops_per_photo=1, photos_per_split=1)
    summary = build_generator_shards(str(tmp_path), cfg, family="ae_deconv_f4", subset="ae_deconv_f4-r1", model=model,
                                     info={"weights": "w.safetensors"})
    shards = list_shards(str(tmp_path))
    assert shards and all("ae_deconv_f4-r1-" in s for s in shards)
    metas = [json.loads(data) for s in shards for name, data in iter_tar_members(open(s, "rb").read())
             if name.endswith(".json")]
    assert {m["subset"] for m in metas} == {"ae_deconv_f4-r1"} and {m["label"] for m in metas} == {"real", "fake"}
    assert {m["split"] for m in metas} == {"train", "val", "test"}
    assert summary["families"]["ae_deconv_f4-r1"]["family"] == "ae_deconv_f4"
    with pytest.raises(GendetError, match="subset"):
        build_generator_shards(str(tmp_path), cfg, family="ae_deconv_f4", subset="bad name", model=model)


@pytest.mark.parametrize("bad, fragment", [
    ({"steps": 0}, "steps"), ({"family": "nope"}, "family"), ({"lr": 0}, "lr"), ({"crop_size": 60}, "crop_size"),
    ({"align_weight": 0, "fidelity_weight": 0}, "both 0"), ({"train": "encoder"}, "train"),
    ({"eval_splits": ("train",)}, "eval_splits"),
])
def test_bad_align_config_fails_in_one_line(bad, fragment):
    with pytest.raises(GendetError, match=fragment) as info:
        AlignConfig(**bad)
    assert "\n" not in str(info.value)


def test_phi_refuses_a_detector_without_a_differentiable_encoder():
    det = tiny_detector()
    det.encoder = "open_clip:ViT-B-32/openai"
    with pytest.raises(GendetError, match="differentiable"):
        Representation(det)
