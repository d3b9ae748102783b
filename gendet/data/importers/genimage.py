"""GenImage (Zhu et al. 2023): ``ROOT/<subset>/{train,val}/{ai,nature}/*``.

``<subset>`` is the generator folder as named on disk (``imagenet_ai_0419_sdv4``, ``Midjourney``,
...); its ``nature`` images are the ImageNet photos GenImage pairs with that generator, so they carry
the same subset. Labels: ``ai`` -> fake, ``nature`` -> real. Split: the folder (``train``/``val``).

content_id grouping rule: a real image is an ImageNet photo and is named by its ImageNet file stem
(``n01440764_10026``), so ``content_id = "imagenet:<stem>"`` -- the same photo appearing under several
generators or splits is one group, and group-aware splits never put it on both sides. A fake image is
generated from a class prompt, not from a particular photo, so it is its own group:
``content_id = "genimage:<subset>/<split>/<stem>"``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from gendet.data.importers.common import Group, Item, interleave, layout_error, list_tree, stem, write_groups

SPLITS = ("train", "val")
LABEL_DIRS = {"ai": "fake", "nature": "real"}
LAYOUT = "ROOT/<subset>/{train,val}/{ai,nature}/<images>"


def plan_genimage(root: str, rels: list[str]) -> tuple[list[Group], list[tuple[str, str]]]:
    """Groups per (subset, split), fakes and reals interleaved; files outside the layout are
    returned as ``("outside_layout", rel)`` to be counted."""
    lists: dict[tuple[str, str], dict[str, list[Item]]] = defaultdict(lambda: {"fake": [], "real": []})
    outside = []
    for rel in rels:
        parts = rel.split("/")
        if len(parts) < 4 or parts[1] not in SPLITS or parts[2] not in LABEL_DIRS:
            outside.append(("outside_layout", rel))
            continue
        subset, split, label = parts[0], parts[1], LABEL_DIRS[parts[2]]
        content_id = f"imagenet:{stem(rel)}" if label == "real" else f"genimage:{subset}/{split}/{stem(rel)}"
        lists[(subset, split)][label].append(Item(rel=rel, name="/".join(parts[2:]), label=label, content_id=content_id))
    if not lists:
        raise layout_error(root, rels, "GenImage", LAYOUT, SPLITS)
    groups = [Group(subset, split, interleave(by["fake"], by["real"])) for (subset, split), by in sorted(lists.items())]
    return groups, outside


def import_genimage(root: str, out: str, *, shard_size: int = 1000, overwrite: bool = False) -> dict[str, Any]:
    groups, outside = plan_genimage(root, list_tree(root))
    return write_groups(root, out, groups, source="genimage", shard_size=shard_size, overwrite=overwrite,
                        skipped_in_plan=outside)
