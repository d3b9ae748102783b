"""``gendet zoo OUT``: photo corpus -> generator zoo -> demo WebDataset shards (see gendet.zoo)."""

from __future__ import annotations

import argparse
import json

from gendet.config import csv_tuple
from gendet.zoo.config import parse_families


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder or fsspec URL for the shards")
    parser.add_argument("--families", default="all", help="comma-separated families (default: all); see gendet.zoo.config")
    parser.add_argument("--photos-per-split", type=int, default=0, help="at most N photos per split (0 = all)")
    parser.add_argument("--crops-per-photo", type=int, default=8, help="real crops (and as many fakes) per photo and family")
    parser.add_argument("--crop-size", type=int, default=64, help="crop side in pixels, multiple of 8 (weights trained at 64)")
    parser.add_argument("--masked-fraction", type=float, default=0.0, help="share of fakes regenerated only inside a mask")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--crop-sizes", default="", help="several native crop sides, e.g. 64,128,256 (overrides --crop-size)")
    parser.add_argument("--jpeg-fraction", type=float, default=0.0,
                        help="share of images stored as JPEG, drawn alike for reals and fakes (default: all PNG)")
    parser.add_argument("--jpeg-quality", default="70,95", help="JPEG quality range LOW,HIGH drawn per image")
    parser.add_argument("--sources", default="", help="photo sources, comma-separated (default: every installed one)")
    parser.add_argument("--small", action="store_true", help="tiny run: 2 photos per split, 2 crops per photo")


def run(args: argparse.Namespace) -> int:
    from gendet.zoo.shards import ZooShardsConfig, build_zoo_shards  # torch only when the verb runs

    cfg = ZooShardsConfig(families=parse_families(args.families),
                          photos_per_split=2 if args.small else args.photos_per_split,
                          crops_per_photo=2 if args.small else args.crops_per_photo,
                          crop_size=args.crop_size, masked_fraction=args.masked_fraction,
                          seed=args.seed, shard_size=args.shard_size,
                          crop_sizes=tuple(int(v) for v in csv_tuple(args.crop_sizes)),
                          jpeg_fraction=args.jpeg_fraction,
                          jpeg_quality=tuple(int(v) for v in csv_tuple(args.jpeg_quality)),
                          sources=csv_tuple(args.sources))
    summary = build_zoo_shards(args.out, cfg)
    print(json.dumps({f: {k: v for k, v in s.items() if k != "shards"} for f, s in summary["families"].items()}))
    return 0
