"""What a feature-store variant holds, by split and subset, and the check every verb runs on it
before any work: the splits it will score and the subsets it will train on must have rows.

One read of two dictionary-encoded string columns (``split``, ``subset``), no features: well under
a second for a few hundred thousand rows. A verb asked for ``--eval-splits test`` on a GenImage
store (train/val) is refused here, before Ray starts, rather than after the training it precedes.
"""

from __future__ import annotations

from collections.abc import Sequence

from gendet import GendetError
from gendet.features.store import open_dataset


def row_counts(variant_url: str) -> dict[tuple[str, str], int]:
    """{(split, subset): rows} of a variant's finished shards."""
    table = open_dataset(variant_url).to_table(columns=["split", "subset"])
    grouped = table.group_by(["split", "subset"]).aggregate([([], "count_all")]).to_pydict()
    return {(sp or "", su or ""): n for sp, su, n in zip(grouped["split"], grouped["subset"], grouped["count_all"])}


def _names(values: Sequence[str]) -> str:
    return ",".join(v or '""' for v in values) or "none"


def check_rows(variant_url: str, *, eval_splits: Sequence[str] = (), train_subsets: Sequence[str] = (),
               train_splits: Sequence[str] = ("train",), counts: dict[tuple[str, str], int] | None = None) -> None:
    """One-line errors, naming what the store has and the flag to pass, when a split of
    ``eval_splits`` has no rows, or a subset of ``train_subsets`` has none in ``train_splits``."""
    counts = row_counts(variant_url) if counts is None else counts
    splits = sorted({sp for sp, _ in counts})
    missing = [s for s in eval_splits if s not in splits]
    if missing:
        scored = [s for s in splits if s not in train_splits] or splits
        raise GendetError(f"no rows of split {_names(missing)} in {variant_url}; the store has {_names(splits)}: "
                          f"pass --eval-splits {_names(scored)}")
    subsets = sorted({su for (sp, su), n in counts.items() if sp in train_splits and n})
    missing = [s for s in train_subsets if s not in subsets]
    if missing:
        raise GendetError(f"no rows of subset {_names(missing)} in split {_names(train_splits)} of {variant_url}; "
                          f"its subsets there: {_names(subsets)}: pass --train-subsets with some of them")
