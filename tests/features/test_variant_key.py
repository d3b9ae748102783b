"""The variant key (encoder, weights digest, preprocessing, precision, degradation): folder names
one per degradation, the key a model records and is matched on, and 0.3.0 stores."""

from __future__ import annotations

import numpy as np
import pytest

from gendet import GendetError
from gendet import io as gio
from gendet.eval.scoring import check_matches
from gendet.features.sources import TensorSource
from gendet.features.store import (
    MANIFEST,
    check_variant,
    key_difference,
    list_variants,
    resolve_variant,
    variant_key,
    variant_name,
)
from gendet.method.gendet.config import TrainConfig
from gendet.method.gendet.detector import Detector
from gendet.method.gendet.trainer import train_all
from helpers.synthetic_store import write_synthetic_store

PHASH = "abcdef0123456789" * 4


def _manifest(root, folder, **fields):
    url = gio.join(str(root), folder)
    gio.write_json_atomic(gio.join(url, MANIFEST), {"preprocess_hash": PHASH, "dim": 8, "shards": ["a"], **fields})
    return url


def test_every_degradation_has_its_own_folder_and_protocol_names_are_unchanged():
    names = {d: variant_name("spectrum:v1", PHASH, d) for d in ("", "jpeg:65", "blur:1.5", "blur:15", "blur:0.15",
                                                              "aug:0.5", "odd:a,b", "odd:a;b")}
    assert len(set(names.values())) == len(names)
    # the 0.3.0 names of whole-number specs (every spec of the GenImage protocol) stay as they were
    assert names["jpeg:65"] == "spectrum-v1__abcdef0123__jpeg65" and names["blur:15"].endswith("__blur15")
    assert names["blur:1.5"].endswith("__blur1.5") and names[""] == "spectrum-v1__abcdef0123"


def test_key_difference_compares_only_what_both_recorded():
    new = {"encoder": "e", "weights_digest": "sha256:1", "preprocess_hash": "p", "precision": "fp16", "degrade": ""}
    assert key_difference(new, {**new, "precision": "fp32"}) == "precision"
    assert key_difference(new, {**new, "weights_digest": "sha256:2"}) == "weights_digest"
    assert key_difference(new, {**new, "precision": "", "weights_digest": ""}) is None  # a 0.3.0 store or model
    assert variant_key(new) == variant_key(dict(new)) != variant_key({**new, "precision": "fp32"})


def test_a_0_3_0_folder_that_two_degradations_shared_is_refused_beside_the_new_one(tmp_path):
    # gendet 0.3.0 wrote --degrade blur:1.5 into ...__blur15, the folder of blur:15
    old = _manifest(tmp_path, variant_name("spectrum:v1", PHASH, "blur:15"), encoder="spectrum:v1", degrade="blur:1.5")
    with pytest.raises(GendetError) as err:
        resolve_variant(str(tmp_path), degrade="blur:1.5")
    message = str(err.value)
    assert "\n" not in message and message.startswith(old) and "re-extract" in message and "--degrade blur:1.5" in message
    assert variant_name("spectrum:v1", PHASH, "blur:1.5") in message  # where the re-extraction writes
    new = _manifest(tmp_path, variant_name("spectrum:v1", PHASH, "blur:1.5"), encoder="spectrum:v1", degrade="blur:1.5")
    assert resolve_variant(str(tmp_path), degrade="blur:1.5").url == new  # the re-extracted one is read
    assert {v.url: v.legacy_folder for v in list_variants(str(tmp_path))} == {old: True, new: False}


def test_a_0_3_0_store_stays_readable(tmp_path):
    """Manifests without weights digest and precision: read, and matched on what they recorded."""
    write_synthetic_store(str(tmp_path), dim=16, per_split={"train": 8})
    variant = resolve_variant(str(tmp_path))
    assert variant.weights_digest == variant.precision == "" and not variant.legacy_folder
    check_variant(variant, {"encoder_precision": "fp16", "encoder_weights_digest": "sha256:0"})  # nothing to compare


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store variant with a full key and a detector trained on it through train_all."""
    root = tmp_path_factory.mktemp("keyed")
    url = write_synthetic_store(str(root), dim=16, per_split={"train": 40, "val": 20})
    manifest = gio.read_json(gio.join(url, MANIFEST))
    gio.write_json_atomic(gio.join(url, MANIFEST), {**manifest, "weights": "s3://models/w.pt",
                                                    "weights_digest": "fingerprint:1234", "precision": "fp16"})
    variant = resolve_variant(str(root))
    rng = np.random.default_rng(0)
    source = TensorSource(rng.normal(size=(40, 16)).astype("float32"), np.arange(40) % 2, batch_size=8)
    cfg = TrainConfig(methods=("linear_probe",), train_subsets=("seen",), classifier_epochs=1)
    det = train_all(cfg, source, **variant.detector_fields()).detectors["linear_probe"]
    saved = str(root / "det")
    det.save(saved)
    return variant, Detector.load(saved)


def test_a_detector_records_the_variant_key_it_was_trained_on(trained):
    variant, det = trained
    assert (det.encoder, det.encoder_weights, det.encoder_weights_digest, det.encoder_precision, det.preprocess_hash) == (
        variant.encoder, "s3://models/w.pt", "fingerprint:1234", "fp16", variant.preprocess_hash)
    check_matches({"linear_probe": det}, variant)  # its own store: accepted


@pytest.mark.parametrize("change, flag", [({"precision": "fp32"}, "--precision fp16"),
                                          ({"weights_digest": "sha256:99", "weights": "/other.pt"}, "--weights s3://models/w.pt")])
def test_a_store_of_another_key_is_refused_in_one_line_naming_folder_and_flag(trained, change, flag):
    variant, det = trained
    other = variant.__class__(**{**{f: getattr(variant, f) for f in variant.__slots__}, **change})
    with pytest.raises(GendetError) as err:
        check_matches({"linear_probe": det}, other)
    message = str(err.value)
    assert message.startswith(variant.url) and flag in message and "\n" not in message
