"""The ``gendet`` command: one verb per job, each a module of ``pipelines`` with its typed job.

``gendet VERB --help`` shows the job's fields as flags with their defaults and an example;
``python -m pipelines.<module>`` runs the same job (what ``ray job submit`` runs). A verb's module
is imported only when that verb runs (``gendet --help`` starts neither torch nor Ray), and a verb
whose module is not part of this install is not offered.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from gendet import __version__

# verb -> (module, one-line help), in the order users meet them
VERBS: dict[str, tuple[str, str]] = {
    "import": ("pipelines.import_shards", "turn GenImage / UniversalFakeDetect / plain folders into WebDataset shards"),
    "zoo": ("pipelines.zoo", "build the offline photo corpus and generator zoo, and write demo shards"),
    "extract": ("pipelines.extract", "shards -> Parquet feature store (Ray Data)"),
    "train": ("pipelines.train", "GenDet and its baselines on a feature store (Ray Train), logged to MLflow"),
    "train-gamma": ("pipelines.train_gamma", "GAMMA (token grids, masks) on a token feature store (Ray Train)"),
    "sweep": ("pipelines.sweep", "a grid of training settings (alpha x M, ...) on Ray Tune, one MLflow run per trial"),
    "evaluate": ("pipelines.evaluate", "per-subset metrics table of a model on a feature store"),
    "predict": ("pipelines.predict", "score images, folders or URLs: one JSON line per image"),
    "serve": ("pipelines.serve", "a model online on Ray Serve: batched, autoscaled, MLflow's request format"),
    "score": ("pipelines.score", "score a bucket of unlabelled images on Ray Data: Parquet with a verdict per image"),
    "calibrate": ("pipelines.calibrate", "move a model's threshold and band to your own labelled rows, without retraining"),
    "refresh": ("pipelines.refresh", "extract new shards, score the champion on them, alert when it slips"),
    "fix": ("pipelines.fix", "retrain the champion with the subsets that slipped (few-shot), gate, promote"),
    "coevolve": ("pipelines.coevolve", "rounds: a generator aligned against the champion, the champion fixed with its fakes"),
    "demo": ("pipelines.demo", "the whole system offline: photos -> zoo -> shards -> features -> train -> evaluate"),
}
DESCRIPTION = """Detect AI-generated images with GenDet, at data-center scale on Ray and MLflow.

Run `gendet VERB --help` for a verb's flags, their defaults and an example. Every verb is also
`python -m pipelines.<module> ...` with the same flags (for `ray job submit`)."""


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


def top_level_parser(verbs: dict[str, tuple[str, str]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gendet", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gendet {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (_, help_) in verbs.items():
        sub.add_parser(verb, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipelines import _jobs

    argv = list(sys.argv[1:] if argv is None else argv)
    verbs = available_verbs()
    if not argv or argv[0] not in verbs:  # help, --version, or an unknown verb: argparse says so
        top_level_parser(verbs).parse_args(argv[:1] or ["--help"])
        return 2
    verb, rest = argv[0], argv[1:]
    module = importlib.import_module(verbs[verb][0])
    return _jobs.run(module.JOB, rest, prog=f"gendet {verb}")


if __name__ == "__main__":
    sys.exit(main())
