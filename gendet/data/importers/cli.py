"""``gendet import genimage|ufd|folder``: dataset folder layouts -> WebDataset shards."""

from __future__ import annotations

import argparse
import json

from gendet.data.importers.common import format_summary
from gendet.data.shards import SPLITS


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="output folder for the .tar shards (local path or fsspec URL)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete shards of the same name already in OUT (otherwise that is an error)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="layout", metavar="LAYOUT", required=True)
    p = sub.add_parser("genimage", help="GenImage: ROOT/<subset>/{train,val}/{ai,nature}/*",
                       description="Import GenImage. ai -> fake, nature -> real; subset = generator folder; "
                                   "split from the folder; reals grouped by ImageNet file stem.")
    p.add_argument("root", metavar="ROOT", help="the folder holding one folder per generator")
    _common(p)
    p = sub.add_parser("ufd", help="UniversalFakeDetect/ForenSynths: ROOT/<subset>/[<class>/]{0_real,1_fake}/*",
                       description="Import UniversalFakeDetect / ForenSynths. 0_real -> real, 1_fake -> fake; "
                                   "subset = generator folder; class kept in the json.")
    p.add_argument("root", metavar="ROOT", help="the folder holding one folder per generator")
    p.add_argument("--split", choices=SPLITS, default=None,
                   help="split of every sample (default: ROOT's name when it is train/val/test, else none)")
    _common(p)
    p = sub.add_parser("folder", help="any folder of images, one label and subset",
                       description="Import every image under DIR (recursive) with one label and subset.")
    p.add_argument("root", metavar="DIR", help="folder of images (searched recursively)")
    p.add_argument("--label", required=True, choices=("real", "fake"))
    p.add_argument("--subset", required=True, help="the group results are reported by (e.g. the generator)")
    p.add_argument("--split", choices=SPLITS, default="", help="split of every sample (default: none)")
    _common(p)


def run(args: argparse.Namespace) -> int:
    from gendet.data.importers import import_folder, import_genimage, import_ufd

    common = {"shard_size": args.shard_size, "overwrite": args.overwrite}
    if args.layout == "genimage":
        summary = import_genimage(args.root, args.out, **common)
    elif args.layout == "ufd":
        summary = import_ufd(args.root, args.out, split=args.split, **common)
    else:
        summary = import_folder(args.root, args.out, label=args.label, subset=args.subset, split=args.split, **common)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
