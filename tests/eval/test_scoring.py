"""Scoring a feature store in one process (gendet.eval.scoring): the library half of `gendet evaluate`."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from gendet import GendetError
from gendet.eval import scoring
from gendet.features.store import feature_files, feature_matrix, resolve_variant
from gendet.method.gendet.detector import Detector, build_method_nets
from gendet.method.gendet.networks import Arch
from helpers.synthetic_store import ENCODER, PHASH, write_synthetic_store


def _detector(method: str, dim: int = 64) -> Detector:
    torch.manual_seed(0)
    arch = Arch(feature_dim=dim, width=32, heads=4)
    return Detector(method=method, arch=arch, nets=build_method_nets(method, arch), encoder=ENCODER,
                    preprocess_hash=PHASH, threshold=0.5, target_fpr=0.05)


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    write_synthetic_store(str(root), per_split={"train": 20, "test": 12})
    return resolve_variant(str(root))


def test_scores_are_the_detectors_own_on_the_rows_of_the_split(variant):
    dets = {"gendet": _detector("gendet"), "linear_probe": _detector("linear_probe")}
    scored = scoring.score_store(dets, variant, ("test",))
    assert len(scored["label"]) == 24 and set(scored["subset"]) == {"seen", "unseen"}
    files = feature_files(variant.url)
    x = feature_matrix(pads.dataset(files, format="parquet").to_table(filter=pads.field("split") == "test").column("feature"))
    assert x.shape == (24, 64)
    np.testing.assert_allclose(np.sort(scored["score_gendet"]), np.sort(dets["gendet"].score(x)), rtol=1e-6)
    assert "discrepancy_gendet" in scored and "discrepancy_linear_probe" not in scored  # only students have one
    assert (scored["discrepancy_gendet"] > 0).all()
    reports = scoring.reports(scored, dets, model_uris={"gendet": "models:/gendet@champion"})
    assert reports["gendet"]["model"] == "models:/gendet@champion" and reports["gendet"]["subsets"]["seen"]["n_real"] == 6


def test_rows_of_named_shards_and_one_line_errors(variant):
    dets = {"teacher": _detector("teacher")}
    by_shard = scoring.score_store(dets, variant, shards=("synthetic-000000",))
    assert len(by_shard["label"]) == (2 * 20 + 2 * 12) // 2
    with pytest.raises(GendetError, match="no rows with split in"):
        scoring.score_store(dets, variant, ("val",))
    with pytest.raises(GendetError, match="name the splits or the shards"):
        scoring.score_store(dets, variant)
    with pytest.raises(GendetError, match="do not match the teacher detector"):
        scoring.score_store({"teacher": _detector("teacher", dim=32)}, variant, ("test",))
