"""``gendet coevolve`` / ``python -m pipelines.coevolve``: generator and detector, round after round.

Round k (k = 1..ROUNDS), each in ``OUT/round-k/``:

1. pin the champion (``models:/NAME@champion`` -> its version) and load it;
2. align the generator G_{k-1} (round 0: the zoo's weights of ``--family``) against it: a Ray task
   (``align_task``, ``--align-cpus`` CPUs) runs ``gendet.coevolve.align.align_generator`` and
   returns the tuned state dict; the driver writes ``generator.safetensors`` + ``.lineage.json``;
3. write its fakes as shards of subset ``FAMILY-rk`` (``build_generator_shards``: the zoo's sample
   format, photos and splits) and extract only them into FEATURES (``pipelines.extract``);
4. score the champion on the store's test rows (before), fix it with the round's subset
   (``pipelines.fix.fix``: retrain with ``--shots`` of them, gate every family, promote if it
   passes) and score the champion again (after): the round's fakes caught before/after, and the
   balanced accuracy on the families held out of every round;
5. log an MLflow run (experiment ``gendet-coevolve``) with the lineage tags and write
   ``round.json`` last: a rerun skips the rounds that have it, and inside a round reuses the
   generator, shards and fix a killed run left.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from gendet import GendetError
from gendet import io as gio
from gendet.config import csv_tuple, to_dict

EXPERIMENT = "gendet-coevolve"
TAG = "gendet.coevolve."
FIX_FIELDS = ("challenger_version", "promoted", "reason", "worst_family", "shots", "families")  # of fix.json, into round.json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", metavar="FEATURES", help="the feature store the champion was trained on")
    p.add_argument("--model", default="models:/gendet@champion", help="the registered detector (models:/NAME@champion)")
    p.add_argument("--family", default="sdedit", help="zoo family whose generator co-evolves")
    p.add_argument("--rounds", type=int, default=3, help="rounds to run (done ones are skipped)")
    p.add_argument("--out", default="out/coevolve", help="output folder: round-K/ per round, coevolve.json")
    p.add_argument("--mlflow-out", default=None, help="folder of the SQLite MLflow store when MLFLOW_TRACKING_URI is unset "
                                                      "(the registry of --model; default --out)")
    p.add_argument("--steps", type=int, default=20, help="alignment steps per round")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--align-weight", type=float, default=1.0, help="lambda of 1 - cos(phi(G(x)), phi(x))")
    p.add_argument("--fidelity-weight", type=float, default=1.0, help="weight of L1(G(x), x)")
    p.add_argument("--train", default="auto", help="parameters that train: auto, decoder or all")
    p.add_argument("--crops-per-photo", type=int, default=16, help="real and fake crops per photo in each round's shards")
    p.add_argument("--photos-per-split", type=int, default=0, help="at most this many photos per split (0 = all)")
    p.add_argument("--align-crops-per-photo", type=int, default=8, help="training crops per photo for the alignment")
    p.add_argument("--shots", type=int, default=64, help="fakes (and reals) of each round's subset the fix trains on")
    p.add_argument("--held-out", type=csv_tuple, default=(),
                   help="families held out of every round (default: the store's subsets minus the champion's training "
                        "subsets, FAMILY and its rounds)")
    p.add_argument("--subset-name", default="", help="round k's subset is NAME-rk (default: FAMILY); another name keeps "
                                                     "a second run's subsets apart in the same store")
    p.add_argument("--gate-max-family-drop", type=float, default=0.02,
                   help="the fix's gate: largest fall of any subset's calibrated accuracy below the champion's")
    p.add_argument("--align-cpus", type=float, default=1.0, help="CPUs of the alignment Ray task")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers of the fix")
    p.add_argument("--seed", type=int, default=0)


def align_config(args: argparse.Namespace, k: int):
    from gendet.coevolve.align import AlignConfig

    return AlignConfig(family=args.family, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                       align_weight=args.align_weight, fidelity_weight=args.fidelity_weight, train=args.train,
                       seed=args.seed + k, crops_per_photo=args.align_crops_per_photo)


def _align(cfg: Any, detector: Any, state: dict | None) -> dict[str, Any]:
    """The Ray task's body: align, return the tuned weights and the summary (no file written)."""
    import torch

    from gendet.coevolve.align import align_generator, summary
    from gendet.zoo.config import family_config
    from gendet.zoo.models import build_model
    from gendet.zoo.train import TRAIN_THREADS

    torch.set_num_threads(TRAIN_THREADS)
    model = None
    if state is not None:
        model = build_model(family_config(cfg.family))
        model.load_state_dict(state)
    result = align_generator(cfg, detector, model=model, log_every=max(1, cfg.steps // 4))
    return {"state": {k: v.detach().clone() for k, v in result.model.state_dict().items()},
            "summary": summary(result), "history": result.history}


def pinned(model: str, client: Any) -> tuple[str, str]:
    """(name, version) that ``models:/NAME@champion`` names now."""
    from gendet.mlops.registry import pin

    found = pin(client, model)
    if found is None:
        raise GendetError(f"--model {model}: co-evolution updates a registered model; pass models:/NAME@champion")
    return found.name, str(found.version)


def score_test(detector: Any, features: str) -> dict[str, dict[str, float]]:
    """Per-subset rates of ``detector`` on every test row of the store (in this process)."""
    from gendet.coevolve.rounds import subset_rates
    from gendet.eval.scoring import score_store
    from gendet.features.store import resolve_variant

    variant = resolve_variant(features, encoder=detector.encoder)
    return subset_rates(score_store({"m": detector}, variant, ("test",)), detector.threshold, "score_m")


def previous_generator(args: argparse.Namespace, k: int) -> tuple[dict | None, dict[str, str]]:
    """(state dict of G_{k-1} or None for the zoo's weights, its identity for the lineage)."""
    from safetensors.torch import load_file

    from gendet.coevolve.lineage import file_digest, load_aligned
    from gendet.coevolve.rounds import round_dir
    from gendet.zoo.train import load_or_train

    if k == 1:
        path = load_or_train(args.family, progress=False)[2]["weights"]
        digest = file_digest(path)
        return None, {"parent_weights": path, "parent_weights_digest": digest, "base_weights": path,
                      "base_weights_digest": digest}
    path = gio.join(round_dir(args.out, k - 1), "generator.safetensors")
    _, lineage = load_aligned(path)
    return load_file(path), {"parent_weights": path, "parent_weights_digest": lineage["weights_digest"],
                             "base_weights": lineage["base_weights"], "base_weights_digest": lineage["base_weights_digest"]}


def run_round(args: argparse.Namespace, k: int, client: Any, held_out: tuple[str, ...] | None) -> dict[str, Any]:
    import ray

    from gendet.coevolve.lineage import load_aligned, save_aligned
    from gendet.coevolve.rounds import held_out_summary, round_dir, round_subset
    from gendet.eval.refresh_state import model_digest
    from gendet.extract.config import ExtractConfig
    from gendet.serve.loading import load_detector
    from gendet.zoo.config import family_config
    from gendet.zoo.models import build_model
    from gendet.zoo.shards import ZooShardsConfig, build_generator_shards
    from pipelines.extract import extract
    from pipelines.fix import fix

    started = time.perf_counter()
    rdir, subset = round_dir(args.out, k), round_subset(args.subset_name or args.family, k)
    name, version = pinned(args.model, client)
    detector = load_detector(f"models:/{name}/{version}")
    digest_before = model_digest(detector)
    weights = gio.join(rdir, "generator.safetensors")
    if os.path.isfile(weights):  # a killed run aligned this round already
        model, lineage = load_aligned(weights)
        print(f"[round {k}] reusing {weights}", flush=True)
    else:
        state, parent = previous_generator(args, k)
        cfg = align_config(args, k)
        print(f"[round {k}] aligning {args.family} against {name} v{version} ({cfg.steps} steps, Ray task)", flush=True)
        task = ray.remote(num_cpus=args.align_cpus)(_align)
        got = ray.get(task.remote(cfg, detector, state))
        model = build_model(family_config(args.family))
        model.load_state_dict(got["state"])
        lineage = save_aligned(model.eval(), args.family, weights, {
            **parent, "round": k, "detector": {"uri": f"models:/{name}/{version}", "name": name, "version": version,
                                               "digest": digest_before, "method": detector.method,
                                               "encoder": detector.encoder},
            "align_config": to_dict(cfg),
            "metrics": got["summary"], "history": got["history"]})
    shards = gio.join(rdir, "shards")
    zoo_cfg = ZooShardsConfig(families=(), crops_per_photo=args.crops_per_photo, photos_per_split=args.photos_per_split,
                              seed=args.seed)
    if not gio.exists(gio.join(shards, "zoo_summary.json")):
        build_generator_shards(shards, zoo_cfg, family=args.family, subset=subset, model=model,
                               info={"weights": weights, "weights_digest": lineage["weights_digest"]})
    extracted = extract(ExtractConfig(shards=shards, features=args.features, encoder=detector.encoder,
                                      precision=detector.encoder_precision or "fp32", batch_size=256))
    if extracted.get("shards_failed"):
        raise GendetError(f"{shards}: {extracted['shards_failed']} shard(s) failed to extract; rerun to redo them")
    before = score_test(detector, args.features)
    fixed = gio.join(rdir, "fix", "fix.json")
    result = gio.read_json(fixed) if gio.exists(fixed) else fix(
        args.features, model=f"models:/{name}@champion", subsets=[subset], shots=args.shots, out=gio.join(rdir, "fix"),
        num_workers=args.num_workers, gate_max_family_drop=args.gate_max_family_drop, tracking_uri=client.tracking_uri)
    name_after, version_after = pinned(f"models:/{name}@champion", client)
    after_det = load_detector(f"models:/{name}/{version_after}")
    after = score_test(after_det, args.features)
    held = held_out if held_out is not None else default_held_out(client, name, version, before, args.family)
    return {"subset": subset, "family": args.family, "generator": {
                "weights": weights, "weights_digest": lineage["weights_digest"],
                "parent_weights_digest": lineage["parent_weights_digest"], "metrics": lineage["metrics"]},
            "detector_before": {"name": name, "version": version, "digest": digest_before},
            "detector_after": {"name": name_after, "version": version_after, "digest": model_digest(after_det)},
            "fix": {k_: result.get(k_) for k_ in FIX_FIELDS},
            "caught_before": before.get(subset, {}).get("caught"), "caught_after": after.get(subset, {}).get("caught"),
            "base_family": {"before": before.get(args.family), "after": after.get(args.family)},
            "held_out": {"before": held_out_summary(before, held), "after": held_out_summary(after, held)},
            "rates_before": before, "rates_after": after, "seconds": round(time.perf_counter() - started, 1)}


def default_held_out(client: Any, name: str, version: str, rates: dict, family: str) -> tuple[str, ...]:
    """The store's subsets that neither the first champion trained on nor any round touches (``FAMILY-*``)."""
    run = client.get_run(client.get_model_version(name, version).run_id)
    trained = set(json.loads(run.data.params.get("train_subsets", "[]") or "[]"))
    return tuple(s for s in rates if s not in trained and s != family and not s.startswith(f"{family}-"))


def log_round(k: int, record: dict[str, Any]) -> str:
    import mlflow

    gen, before, after = record["generator"], record["detector_before"], record["detector_after"]
    tags = {TAG + "round": str(k), TAG + "subset": record["subset"], TAG + "generator_weights_digest": gen["weights_digest"],
            TAG + "parent_weights_digest": gen["parent_weights_digest"], TAG + "detector_version_before": before["version"],
            TAG + "detector_version_after": after["version"], TAG + "detector_digest_before": before["digest"],
            TAG + "detector_digest_after": after["digest"], TAG + "promoted": str(bool(record["fix"]["promoted"]))}
    metrics = {"psnr_before": gen["metrics"]["before"]["psnr"], "psnr_after": gen["metrics"]["after"]["psnr"],
               "ssim_before": gen["metrics"]["before"]["ssim"], "ssim_after": gen["metrics"]["after"]["ssim"],
               "align_caught_before": gen["metrics"]["before"]["caught"], "align_caught_after": gen["metrics"]["after"]["caught"],
               "caught_before": record["caught_before"], "caught_after": record["caught_after"],
               "held_out_acc_before": record["held_out"]["before"]["acc"],
               "held_out_acc_after": record["held_out"]["after"]["acc"]}
    with mlflow.start_run(run_name=f"coevolve-{record['subset']}", tags=tags) as run:
        mlflow.log_metrics({k_: float(v) for k_, v in metrics.items() if v is not None})
        mlflow.log_dict(record, "round.json")
        return run.info.run_id


def run(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from gendet.coevolve.rounds import is_done, read_round, write_round
    from gendet.eval.metrics import json_safe
    from gendet.mlops import tracking
    from gendet.zoo.config import family_config
    from pipelines._ray import init_ray, require_ray

    require_ray()
    family_config(args.family)  # unknown family: one line, before any work
    align_config(args, 1)  # bad alignment settings: one line, before any work
    if args.rounds < 1:
        raise GendetError(f"--rounds {args.rounds}: give at least 1")
    if not gio.exists(args.features):
        raise GendetError(f"{args.features}: no feature store here; pass the store the champion was trained on")
    uri = tracking.check_tracking(args.mlflow_out or args.out)
    client = MlflowClient(uri)
    pinned(args.model, client)
    # before exporting the URI: with the SQLite default the experiment keeps its artifacts next to it
    tracking.use_experiment(args.mlflow_out or args.out, EXPERIMENT)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # models:/ loads, the fix's training run and the rounds' runs
    init_ray()
    records = []
    for k in range(1, args.rounds + 1):
        if is_done(args.out, k):
            print(f"[round {k}] done before: skipped", flush=True)
            records.append(read_round(args.out, k))
            continue
        record = json_safe(run_round(args, k, client, tuple(args.held_out) or None))
        tracking.use_experiment(args.mlflow_out or args.out, EXPERIMENT)  # fix's training moved MLflow elsewhere
        os.environ["MLFLOW_TRACKING_URI"] = uri
        record["mlflow_run_id"] = log_round(k, record)
        write_round(args.out, k, record)
        records.append({"round": k, **record})
        held = record["held_out"]
        print(f"[round {k}] caught {record['caught_before']} -> {record['caught_after']}, held-out acc "
              f"{held['before']['acc']} -> {held['after']['acc']} ({record['seconds']} s)", flush=True)
    gio.write_json_atomic(gio.join(args.out, "coevolve.json"), {"rounds": records})
    return 0


def main(argv: list[str] | None = None) -> int:
    from pipelines._ray import pipeline_main

    return pipeline_main("python -m pipelines.coevolve", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
