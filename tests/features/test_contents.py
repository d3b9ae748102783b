"""What a store holds by split and subset, and the one-line refusals every verb runs on it before work."""

from __future__ import annotations

import pytest

from gendet import GendetError
from gendet.features.contents import check_rows, row_counts
from helpers.synthetic_store import write_synthetic_store


@pytest.fixture
def genimage_like(tmp_path):
    """A store with train and val only, as GenImage's."""
    return write_synthetic_store(str(tmp_path / "store"), per_split={"train": 6, "val": 4})


def test_row_counts_by_split_and_subset(genimage_like):
    assert row_counts(genimage_like) == {("train", "seen"): 6, ("train", "unseen"): 6,
                                         ("val", "seen"): 4, ("val", "unseen"): 4}


def test_a_missing_eval_split_names_what_the_store_has_and_the_flag(genimage_like):
    with pytest.raises(GendetError) as err:
        check_rows(genimage_like, eval_splits=("test",))
    assert str(err.value) == f"no rows of split test in {genimage_like}; the store has train,val: pass --eval-splits val"
    check_rows(genimage_like, eval_splits=("val",), train_subsets=("seen", "unseen"))  # all there: no error


def test_a_missing_training_subset_names_the_subsets_of_the_training_split(genimage_like):
    with pytest.raises(GendetError, match=r"^no rows of subset sdv14 in split train of .*; its subsets there: seen,unseen: "
                                          r"pass --train-subsets"):
        check_rows(genimage_like, train_subsets=("seen", "sdv14"))
    with pytest.raises(GendetError, match="subset seen in split test .* its subsets there: none"):
        check_rows(genimage_like, train_subsets=("seen",), train_splits=("test",))
