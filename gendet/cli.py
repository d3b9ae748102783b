"""The ``gendet`` console script: one verb per job, each in its own module.

Each verb module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported
only when their verb runs (``gendet --help`` stays fast and does not start torch or Ray), and a verb
whose module is not part of this install is not offered. Verbs that run on Ray live in
``pipelines/`` and are the same code that ``python -m pipelines.<name>`` and ``ray job submit``
run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from gendet import GendetError, __version__

# verb -> (module, one-line help). Order is the order users meet them in.
VERBS: dict[str, tuple[str, str]] = {
    "import": ("gendet.data.importers.cli", "turn GenImage / UniversalFakeDetect / plain folders into WebDataset shards"),
    "zoo": ("gendet.zoo.cli", "build the offline photo corpus and generator zoo, and write demo shards"),
    "extract": ("pipelines.extract", "shards -> Parquet feature store (Ray Data)"),
    "train": ("pipelines.train", "GenDet and its baselines on a feature store (Ray Train), logged to MLflow"),
    "train-gamma": ("pipelines.train_gamma", "GAMMA (token grids, masks) on a token feature store (Ray Train), logged to MLflow"),
    "sweep": ("pipelines.sweep", "a grid of training settings (alpha x M, ...) on Ray Tune, one MLflow run per trial"),
    "evaluate": ("pipelines.evaluate", "per-subset metrics table of a model on a feature store"),
    "predict": ("gendet.serve.predict", "score images, folders or URLs: one JSON line per image"),
    "refresh": ("pipelines.refresh", "extract new shards, score the champion on them, alert when it slips"),
    "fix": ("pipelines.fix", "retrain the champion with the subsets that slipped (few-shot), gate every family, promote"),
    "coevolve": ("pipelines.coevolve", "rounds: a generator aligned against the champion, the champion fixed with its fakes"),
    "demo": ("pipelines.demo", "the whole system offline: photos -> zoo -> shards -> features -> train -> evaluate"),
}


def available_verbs() -> dict[str, tuple[str, str]]:
    out = {}
    for verb, (module, help_) in VERBS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out[verb] = (module, help_)
    return out


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gendet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gendet {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    verbs = available_verbs()
    # Import only the module of the verb being run; the others get a help line only.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for verb, (module, help_) in verbs.items():
        p = sub.add_parser(verb, help=help_, description=help_)
        if verb == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except GendetError as exc:
        print(f"gendet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gendet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
