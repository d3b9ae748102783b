"""GenImage (Zhu et al. 2023), as distributed: ``ROOT/<generator>/<subset>/{train,val}/{ai,nature}/*``
(``GenImage/stable_diffusion_v_1_4/imagenet_ai_0419_sdv4/train/ai/...``), the whole dataset or any of
its generator folders, or one level less (``ROOT/<subset>/{train,val}/...``: one generator's folder, or
a tree already flattened). Each file is placed by where its split folder is.

The subset is the canonical name of its folder (``CANONICAL``, the paper's columns: ``sdv14``,
``midjourney``, ...), whichever level the folder is at; a folder the table does not know keeps its own
name; ``names="folder"`` keeps every folder's own name (what 0.8 did). Its ``nature`` images are the
ImageNet photos GenImage pairs with that generator, so they carry the same subset. Labels: ``ai`` ->
fake, ``nature`` -> real. Split: the folder (``train``/``val``). ``generators`` imports only those
(canonical names or folder names).

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
LAYOUT = "ROOT/<generator>/<subset>/{train,val}/{ai,nature}/<images> (or ROOT/<subset>/{train,val}/...)"
# folder (either level, lower case) -> canonical subset name: the paper's Table 1 columns
CANONICAL = {
    "stable_diffusion_v_1_4": "sdv14", "imagenet_ai_0419_sdv4": "sdv14",
    "stable_diffusion_v_1_5": "sdv15", "imagenet_ai_0424_sdv5": "sdv15",
    "midjourney": "midjourney", "imagenet_midjourney": "midjourney",
    "adm": "adm", "imagenet_ai_0508_adm": "adm",
    "glide": "glide", "imagenet_glide": "glide",
    "wukong": "wukong", "imagenet_ai_0424_wukong": "wukong",
    "vqdm": "vqdm", "imagenet_ai_0419_vqdm": "vqdm",
    "biggan": "biggan", "imagenet_ai_0419_biggan": "biggan",
}


def subset_name(folder: str, names: str = "canonical") -> str:
    """The subset a GenImage folder's images get (module docstring)."""
    return CANONICAL.get(folder.lower(), folder) if names == "canonical" else folder


def carved_to_val(content_id: str, fraction: float) -> bool:
    """Whether a train group goes to the carved val split: 64 bits of a salted SHA-256 of its id."""
    digest = hashlib.sha256(b"gendet-val:" + content_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def place(rel: str) -> tuple[str, str, int] | None:
    """(the subset folder, the generator folder above it or "", the index of the split folder) of a
    file of either layout; None outside both."""
    parts = rel.split("/")
    for at in (1, 2):  # ROOT/<subset>/<split>/... or ROOT/<generator>/<subset>/<split>/...
        if len(parts) >= at + 3 and parts[at] in SPLITS and parts[at + 1] in LABEL_DIRS:
            return parts[at - 1], parts[0] if at == 2 else "", at
    return None


def plan_genimage(root: str, rels: list[str], val_fraction: float = 0.0, *, names: str = "canonical",
                  generators: tuple[str, ...] = ()) -> tuple[list[Group], list[tuple[str, str]]]:
    """Groups per (subset, split), fakes and reals interleaved; files outside the layout are
    returned as ``("outside_layout", rel)`` to be counted. ``val_fraction`` > 0: train's groups in
    that fraction become ``val`` and GenImage's val becomes ``test`` (module docstring)."""
    if not 0.0 <= val_fraction < 1.0:
        raise GendetError(f"--val-fraction {val_fraction}: must be in [0, 1) (0 keeps GenImage's train/val)")
    wanted = {subset_name(g, names) for g in generators}
    lists: dict[tuple[str, str], dict[str, list[Item]]] = defaultdict(lambda: {"fake": [], "real": []})
    outside, found = [], set()
    for rel in rels:
        placed = place(rel)
        if placed is None:
            outside.append(("outside_layout", rel))
            continue
        folder, generator, at = placed
        parts = rel.split("/")[at - 1:]
        subset = subset_name(folder, names)
        if names == "canonical" and subset == folder and generator:  # an unknown subset folder: its generator's name
            subset = CANONICAL.get(generator.lower(), folder)
        split, label = parts[1], LABEL_DIRS[parts[2]]
        found.add(subset)
        if wanted and subset not in wanted:
            continue
        content_id = f"imagenet:{stem(rel)}" if label == "real" else f"genimage:{subset}/{split}/{stem(rel)}"
        if val_fraction:
            split = "test" if split == "val" else "val" if carved_to_val(content_id, val_fraction) else split
        lists[(subset, split)][label].append(Item(rel=rel, name="/".join(parts[2:]), label=label, content_id=content_id))
    if wanted - found:
        raise GendetError(f"{root}: no generator {', '.join(sorted(wanted - found))} here (found "
                          f"{', '.join(sorted(found)) or 'none'}); pass --generators among those")
    if not lists:
        raise layout_error(root, rels, "GenImage", LAYOUT, SPLITS)
    groups = [Group(subset, split, interleave(by["fake"], by["real"])) for (subset, split), by in sorted(lists.items())]
    return groups, outside


def import_genimage(root: str, out: str, *, shard_size: int = 1000, overwrite: bool = False,
                    val_fraction: float = 0.0, names: str = "canonical", generators: tuple[str, ...] = ()) -> dict[str, Any]:
    if not 0.0 <= val_fraction < 1.0:  # before listing a remote tree
        raise GendetError(f"--val-fraction {val_fraction}: must be in [0, 1) (0 keeps GenImage's train/val)")
    groups, outside = plan_genimage(root, list_tree(root), val_fraction, names=names, generators=tuple(generators))
    return write_groups(root, out, groups, source="genimage", shard_size=shard_size, overwrite=overwrite,
                        skipped_in_plan=outside)
