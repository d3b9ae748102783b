"""UniversalFakeDetect / ForenSynths (Wang et al. 2020, Ojha et al. 2023):
``ROOT/<subset>/[<class>/]{0_real,1_fake}/*``.

``<subset>`` is the generator folder (``progan``, ``stylegan``, ``guided``, ...); its ``0_real``
images are the reals that dataset pairs with that generator, so they carry the same subset. Where
a subset has object classes (ProGAN's ``airplane``, ``bicycle``, ...) the class is kept in the
sample json under ``class``. The layout has no split folders: the split is ``--split`` or, when
ROOT itself is named ``train``/``val``/``test``, that name. content_id is the file itself
(``ufd:[<split>/]<subset>/[<class>/]<label dir>/<stem>``): these datasets do not say which images
share a source.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from gendet import GendetError
from gendet import io as gio
from gendet.data.importers.common import Group, Item, interleave, layout_error, list_tree, strip_ext, write_groups
from gendet.data.shards import SPLITS

LABEL_DIRS = {"0_real": "real", "1_fake": "fake"}
LAYOUT = "ROOT/<subset>/[<class>/]{0_real,1_fake}/<images>"


def _parse(rel: str) -> tuple[str, str, str] | None:
    """(subset, class or "", label) of a path in the layout, else None."""
    parts = rel.split("/")
    if len(parts) >= 3 and parts[1] in LABEL_DIRS:
        return parts[0], "", LABEL_DIRS[parts[1]]
    if len(parts) >= 4 and parts[2] in LABEL_DIRS:
        return parts[0], parts[1], LABEL_DIRS[parts[2]]
    return None


def plan_ufd(root: str, rels: list[str], split: str = "") -> tuple[list[Group], list[tuple[str, str]]]:
    per_class: dict[str, dict[str, dict[str, list[Item]]]] = defaultdict(lambda: defaultdict(lambda: {"fake": [], "real": []}))
    outside = []
    for rel in rels:
        parsed = _parse(rel)
        if parsed is None:
            outside.append(("outside_layout", rel))
            continue
        subset, cls, label = parsed
        content_id = "ufd:" + (f"{split}/" if split else "") + strip_ext(rel)
        item = Item(rel=rel, name=rel.split("/", 1)[1], label=label, content_id=content_id,
                    extra={"class": cls} if cls else {})
        per_class[subset][cls][label].append(item)
    if not per_class:
        raise layout_error(root, rels, "UniversalFakeDetect", LAYOUT, LABEL_DIRS)
    groups = [Group(subset, split, [item for cls in sorted(classes)
                                    for item in interleave(classes[cls]["fake"], classes[cls]["real"])])
              for subset, classes in sorted(per_class.items())]
    return groups, outside


def default_split(root: str) -> str:
    name = gio.basename(root).lower()
    return name if name in SPLITS else ""


def import_ufd(root: str, out: str, *, split: str | None = None, shard_size: int = 1000,
               overwrite: bool = False) -> dict[str, Any]:
    """``split=None`` takes it from ROOT's name when that is train/val/test."""
    split = default_split(root) if split is None else split
    if split not in ("", *SPLITS):
        raise GendetError(f"--split {split!r}: choose one of {SPLITS} (or leave it out)")
    groups, outside = plan_ufd(root, list_tree(root), split)
    return write_groups(root, out, groups, source="ufd", shard_size=shard_size, overwrite=overwrite,
                        skipped_in_plan=outside, summary_name=f"ufd-{split}" if split else "ufd")
