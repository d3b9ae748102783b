"""GenImage (Zhu et al. 2023): ``ROOT/<subset>/{train,val}/{ai,nature}/*``.

``<subset>`` is the generator folder as named on disk (``imagenet_ai_0419_sdv4``, ``Midjourney``,
...); its ``nature`` images are the ImageNet photos GenImage pairs with that generator, so they carry
the same subset. Labels: ``ai`` -> fake, ``nature`` -> real. Split: the folder (``train``/``val``).

content_id grouping rule: a real image is an ImageNet photo and is named by its ImageNet file stem
(``n01440764_10026``), so ``content_id = "imagenet:<stem>"`` -- the same photo appearing under several
generators or splits is one group, and group-aware splits never put it on both sides. A fake image is
generated from a class prompt, not from a particular photo, so it is its own group:
``content_id = "genimage:<subset>/<split>/<stem>"``.

GenImage ships train and val only, and the field reports on val. A detector's choices (its
calibration, the promotion gate, a sweep's best point) must read rows that are not reported, so
``val_fraction`` > 0 carves a val split out of train (whole content groups, by a stable hash of the
content_id, so a photo is on one side under every generator) and names GenImage's own val ``test``:
then every job's defaults (choose on val, report test) hold as on the demo's store.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

from gendet import GendetError
from gendet.data.importers.common import Group, Item, interleave, layout_error, list_tree, stem, write_groups

SPLITS = ("train", "val")
LABEL_DIRS = {"ai": "fake", "nature": "real"}
LAYOUT = "ROOT/<subset>/{train,val}/{ai,nature}/<images>"


def carved_to_val(content_id: str, fraction: float) -> bool:
    """Whether a train group goes to the carved val split: 64 bits of a salted SHA-256 of its id."""
    digest = hashlib.sha256(b"gendet-val:" + content_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def plan_genimage(root: str, rels: list[str], val_fraction: float = 0.0) -> tuple[list[Group], list[tuple[str, str]]]:
    """Groups per (subset, split), fakes and reals interleaved; files outside the layout are
    returned as ``("outside_layout", rel)`` to be counted. ``val_fraction`` > 0: train's groups in
    that fraction become ``val`` and GenImage's val becomes ``test`` (module docstring)."""
    if not 0.0 <= val_fraction < 1.0:
        raise GendetError(f"--val-fraction {val_fraction}: must be in [0, 1) (0 keeps GenImage's train/val)")
    lists: dict[tuple[str, str], dict[str, list[Item]]] = defaultdict(lambda: {"fake": [], "real": []})
    outside = []
    for rel in rels:
        parts = rel.split("/")
        if len(parts) < 4 or parts[1] not in SPLITS or parts[2] not in LABEL_DIRS:
            outside.append(("outside_layout", rel))
            continue
        subset, split, label = parts[0], parts[1], LABEL_DIRS[parts[2]]
        content_id = f"imagenet:{stem(rel)}" if label == "real" else f"genimage:{subset}/{split}/{stem(rel)}"
        if val_fraction:
            split = "test" if split == "val" else "val" if carved_to_val(content_id, val_fraction) else split
        lists[(subset, split)][label].append(Item(rel=rel, name="/".join(parts[2:]), label=label, content_id=content_id))
    if not lists:
        raise layout_error(root, rels, "GenImage", LAYOUT, SPLITS)
    groups = [Group(subset, split, interleave(by["fake"], by["real"])) for (subset, split), by in sorted(lists.items())]
    return groups, outside


def import_genimage(root: str, out: str, *, shard_size: int = 1000, overwrite: bool = False,
                    val_fraction: float = 0.0) -> dict[str, Any]:
    if not 0.0 <= val_fraction < 1.0:  # before listing a remote tree
        raise GendetError(f"--val-fraction {val_fraction}: must be in [0, 1) (0 keeps GenImage's train/val)")
    groups, outside = plan_genimage(root, list_tree(root), val_fraction)
    return write_groups(root, out, groups, source="genimage", shard_size=shard_size, overwrite=overwrite,
                        skipped_in_plan=outside)
