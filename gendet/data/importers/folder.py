"""Any folder of images (searched recursively, sorted) -> shards of one label and subset.

content_id is the file itself (``folder:<subset>/<path without extension>``); the sample key is
made from the path under DIR. Shards are ``<subset>[-<split>]-<label>-NNNNNN.tar``, so the real and
the fake folders of one subset can be imported into the same OUT.
"""

from __future__ import annotations

from typing import Any

from gendet import GendetError
from gendet.data.importers.common import Group, Item, list_tree, strip_ext, write_groups
from gendet.data.shards import LABELS, SPLITS


def import_folder(root: str, out: str, *, label: str, subset: str, split: str = "", shard_size: int = 1000,
                  overwrite: bool = False) -> dict[str, Any]:
    if label not in LABELS:
        raise GendetError(f"--label {label!r}: choose real or fake")
    if not subset or not subset.strip():
        raise GendetError("--subset: give the group results are reported by (e.g. the generator's name)")
    if split not in ("", *SPLITS):
        raise GendetError(f"--split {split!r}: choose one of {SPLITS} (or leave it out)")
    rels = list_tree(root)
    if not rels:
        raise GendetError(f"{root}: no files found; pass a folder that holds images")
    items = [Item(rel=r, name=r, label=label, content_id=f"folder:{subset}/{strip_ext(r)}") for r in rels]
    # The label is part of the prefix, so a subset's real and fake folders can share one OUT.
    group = Group(subset, split, items, tag=label)
    return write_groups(root, out, [group], source="folder", shard_size=shard_size, overwrite=overwrite,
                        summary_name=f"folder-{group.prefix}")
