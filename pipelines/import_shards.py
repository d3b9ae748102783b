"""``gendet import LAYOUT ROOT OUT`` / ``python -m pipelines.import_shards``: a dataset's folder
layout -> WebDataset shards (``gendet.data.importers``: the layouts and what each sample gets)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Literal

from gendet.config import check
from pipelines import _jobs
from pipelines._jobs import Positional

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, kw_only=True, slots=True)
class ImportJob:
    """Turn a dataset's folders into WebDataset shards (one image + one .json per sample):
      genimage  ROOT/<generator>/<subset>/{train,val}/{ai,nature}/* (GenImage as distributed; or one level less)
                ai -> fake, nature -> real; reals grouped by ImageNet stem; subsets named sdv14, midjourney, ...
      ufd       ROOT/<subset>/[<class>/]{0_real,1_fake}/* UniversalFakeDetect / ForenSynths; the class kept in the json
      folder    DIR/**/*                                   every image, one --label and --subset

    Examples:
      gendet import genimage /data/GenImage out/shards --val-fraction 0.05      # every generator
      gendet import genimage /data/GenImage out/shards --generators sdv14,midjourney --val-fraction 0.05
      gendet import ufd /data/UniversalFakeDetect/test out/shards --split test
      gendet import folder /data/my_reals out/shards --label real --subset mine --split test
    """

    layout: Positional[Literal["genimage", "ufd", "folder"]]
    """The folder layout (above)."""
    root: Positional[str]
    """The dataset's folder (local path or fsspec URL)."""
    out: Positional[str]
    """Output folder for the .tar shards (local path or fsspec URL)."""
    label: Literal["real", "fake"] | None = None
    """folder: the label of every image."""
    subset: str | None = None
    """folder: the group results are reported by (e.g. the generator)."""
    split: Literal["train", "val", "test", ""] | None = None
    """Split of every sample (ufd: default ROOT's name when it is train/val/test; folder: default none)."""
    val_fraction: float = 0.0
    """genimage: carve this fraction of train (whole content groups) into a val split and name
    GenImage's val test, so choices (calibration, the gate, a sweep) read val and runs report test;
    e.g. 0.05. 0 keeps GenImage's train/val."""
    generators: tuple[str, ...] = ()
    """genimage: import only these generators (canonical names such as sdv14, or folder names); empty: all."""
    names: Literal["canonical", "folder"] = "canonical"
    """genimage: subsets named canonically (sdv14, sdv15, midjourney, adm, glide, wukong, vqdm, biggan:
    the paper's columns) or by their folders as on disk (imagenet_ai_0419_sdv4: 0.8's names)."""
    shard_size: int = 1000
    """Samples per shard."""
    overwrite: bool = False
    """Delete shards of the same name already in OUT (otherwise that is an error)."""
    json: bool = False
    """Print the summary as JSON instead of text."""

    def __post_init__(self) -> None:
        check(self.shard_size >= 1, f"--shard-size {self.shard_size}: must be >= 1")
        if self.layout == "folder":
            check(self.label is not None and bool(self.subset), "import folder: give --label real|fake and --subset NAME")
        else:
            check(self.label is None and self.subset is None,
                  f"import {self.layout}: --label and --subset are for `import folder` (the layout says them)")
        check(not (self.layout == "genimage" and self.split), "import genimage: the split comes from the folders")
        check(0.0 <= self.val_fraction < 1.0, f"--val-fraction {self.val_fraction}: must be in [0, 1)")
        check(self.layout == "genimage" or not self.val_fraction, "--val-fraction: genimage only")
        check(self.layout == "genimage" or not self.generators, "--generators: genimage only")


def run(job: ImportJob) -> dict:
    from gendet.data.importers import import_folder, import_genimage, import_ufd

    common = {"shard_size": job.shard_size, "overwrite": job.overwrite}
    if job.layout == "genimage":
        return import_genimage(job.root, job.out, val_fraction=job.val_fraction, names=job.names,
                               generators=tuple(job.generators), **common)
    if job.layout == "ufd":
        return import_ufd(job.root, job.out, split=job.split, **common)
    return import_folder(job.root, job.out, label=job.label, subset=job.subset, split=job.split or "", **common)


def main(job: ImportJob) -> int:
    from gendet.data.importers.common import format_summary

    summary = run(job)
    _jobs.emit(json.dumps(summary, indent=2) if job.json else format_summary(summary))
    return 0


JOB = _jobs.JobSpec(ImportJob, main)

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.import_shards"))
