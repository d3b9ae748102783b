"""The variant key an extraction records (encoder, weights digest, preprocessing, precision,
degradation) and the runs it refuses: another key into the same folder is one line, before any work."""

from __future__ import annotations

import pytest

from gendet import GendetError
from gendet import io as gio
from gendet.extract.config import ExtractConfig
from gendet.extract.runner import prepare, run_local
from gendet.features.store import MANIFEST, STATS_SUFFIX, done_shards, resolve_variant
from helpers.bad_shards import write_good_shards

DEBUG_CLIP = "open_clip:GenDet-Debug-ViT/none"


@pytest.fixture()
def shards(tmp_path):
    folder = tmp_path / "shards"
    write_good_shards(str(folder), "good", n_shards=2, per_shard=3)
    return folder


def save_debug_clip(path, seed: int) -> str:
    import open_clip
    import torch

    from gendet.encoders.registry import load_preprocess

    load_preprocess(DEBUG_CLIP)  # registers the shipped configs with open_clip
    torch.manual_seed(seed)
    torch.save(open_clip.create_model("GenDet-Debug-ViT", pretrained=None).state_dict(), path)
    return str(path)


def refused(cfg: ExtractConfig) -> str:
    with pytest.raises(GendetError) as err:
        prepare(cfg)
    assert "\n" not in str(err.value)
    return str(err.value)


def as_written_by_0_3_0(variant_url: str, **recorded) -> None:
    """Strip what 0.3.0 did not record (weights digest, precision, key) from the manifest and stats;
    0.3.0 stats kept the run's config, precision included."""
    for url in [gio.join(variant_url, MANIFEST), *gio.glob(variant_url, "*" + STATS_SUFFIX)]:
        data = {k: v for k, v in gio.read_json(url).items() if k not in ("weights_digest", "precision", "variant_key")}
        data.update(recorded)
        gio.write_json_atomic(url, data)


def test_the_manifest_and_every_stats_file_record_the_key(shards, tmp_path):
    store = str(tmp_path / "store")
    run_local(ExtractConfig(encoder="spectrum:v1", shards=str(shards), features=store, decode_workers=0, precision="bf16"))
    variant = resolve_variant(store)
    manifest = gio.read_json(gio.join(variant.url, MANIFEST))
    # spectrum computes in fp32 whatever it is asked: its features' key says so
    assert (variant.precision, variant.weights_digest, variant.weights) == ("fp32", "builtin", "")
    assert manifest["encoder"] == "spectrum:v1" and len(manifest["variant_key"]) == 16
    stats = done_shards(variant.url)
    assert len(stats) == 2 and {s["variant_key"] for s in stats.values()} == {manifest["variant_key"]}
    prepare(ExtractConfig(encoder="spectrum:v1",
                          shards=str(shards), features=store, precision="fp32"))  # the same features: accepted


def test_other_weights_or_precision_are_refused_naming_the_folder_and_the_flag(shards, tmp_path):
    store, weights = str(tmp_path / "store"), save_debug_clip(tmp_path / "a.pt", seed=1)
    base = dict(shards=str(shards), features=store, encoder=DEBUG_CLIP, decode_workers=0)
    run_local(ExtractConfig(**base, weights=weights))
    variant = resolve_variant(store)
    assert variant.weights == weights and variant.weights_digest.startswith("sha256:") and variant.precision == "fp32"
    message = refused(ExtractConfig(**base, weights=weights, precision="bf16"))
    assert message.startswith(variant.url) and "holds fp32 features" in message and "--precision fp32" in message
    other = save_debug_clip(tmp_path / "b.pt", seed=2)
    message = refused(ExtractConfig(**base, weights=other))
    assert message.startswith(variant.url) and f"--weights {weights}" in message
    assert "this run makes encoder weights random-init" in refused(ExtractConfig(**base))  # nor is a random init
    # the same file name with other bytes: 0.3.0 compared names and would have mixed these features in
    save_debug_clip(tmp_path / "a.pt", seed=3)
    assert f"--weights {weights}" in refused(ExtractConfig(**base, weights=weights))


def test_a_0_3_0_variant_stays_readable_and_extendable_and_checked(tmp_path):
    folder, store = tmp_path / "shards", str(tmp_path / "store")
    write_good_shards(str(folder), "old", n_shards=1, per_shard=3)
    cfg = ExtractConfig(shards=str(folder), features=store, encoder=DEBUG_CLIP, decode_workers=0)
    run_local(cfg)
    as_written_by_0_3_0(resolve_variant(store).url)
    assert resolve_variant(store).precision == ""  # read as it is: nothing recorded, nothing compared
    # its precision is the one its shards' config recorded, so a bf16 run is refused, fp32 extends it
    assert "--precision fp32" in refused(ExtractConfig(shards=str(folder), features=store, encoder=DEBUG_CLIP,
                                                       precision="bf16"))
    write_good_shards(str(folder), "new", n_shards=1, per_shard=3)
    summary = run_local(cfg)
    assert summary["shards_done"] == 1 and summary["shards_skipped"] == 1
    assert resolve_variant(store).precision == "fp32" and resolve_variant(store).rows == 6


def test_a_0_3_0_folder_holding_another_degradation_is_refused_and_the_new_spec_has_its_own(shards, tmp_path):
    store = str(tmp_path / "store")
    run_local(ExtractConfig(encoder="spectrum:v1", shards=str(shards), features=store, decode_workers=0, degrade="blur:15"))
    variant = resolve_variant(store, degrade="blur:15")
    # what 0.3.0 did: --degrade blur:1.5 went to the same folder (...__blur15), its shards say so
    as_written_by_0_3_0(variant.url, degrade="blur:1.5")
    message = refused(ExtractConfig(encoder="spectrum:v1", shards=str(shards), features=store, degrade="blur:15"))
    assert message.startswith(variant.url) and "delete the folder and extract again" in message
    plan = prepare(ExtractConfig(encoder="spectrum:v1", shards=str(shards), features=store, degrade="blur:1.5"))
    assert plan.info.url != variant.url and plan.info.url.endswith("__blur1.5") and len(plan.todo) == 2
