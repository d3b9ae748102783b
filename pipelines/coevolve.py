"""``gendet coevolve`` / ``python -m pipelines.coevolve``: generator and detector, round after round.

Round k (k = 1..ROUNDS), each in ``OUT/round-k/``:

1. pin the champion (``models:/NAME@champion`` -> its version) and load it;
2. align the generator G_{k-1} (round 0: the zoo's weights of ``--family``) against it: a Ray task
   (``align_task``, ``--align-cpus`` CPUs) runs ``gendet.coevolve.align.align_generator`` and
   returns the tuned state dict; the driver writes ``generator.safetensors`` + ``.lineage.json``;
3. write its fakes as shards of subset ``FAMILY-rk`` (``build_generator_shards``: the zoo's sample
   format, photos and splits) and extract only them into FEATURES (``pipelines.extract``);
4. score the champion on the store's test rows (before), fix it with the round's subset
   (``pipelines.fix``: retrain with ``--shots`` of them, gate every family, promote if it
   passes) and score the champion again (after): the round's fakes caught before/after, and the
   balanced accuracy on the families held out of every round;
5. log an MLflow run (experiment ``gendet-coevolve``) with the lineage tags and write
   ``round.json`` last: a rerun skips the rounds that have it, and inside a round reuses the
   generator, shards and fix a killed run left.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from gendet import GendetError
from gendet import io as gio
from gendet.config import check, to_dict
from gendet.mlops.gate import GateConfig
from pipelines import _jobs
from pipelines._common import Workers
from pipelines._jobs import Flat, Positional

log = logging.getLogger(__name__)
FIX_FIELDS = ("challenger_version", "promoted", "reason", "worst_family", "shots", "families")  # of fix.json, into round.json


@dataclass(frozen=True, kw_only=True, slots=True)
class CoevolveJob:
    """Rounds of co-evolution: a zoo generator aligned against the champion (its fakes made to look
    real to it, staying close to the photo), its fakes extracted, the champion fixed with a few of
    them (`gendet fix`: retrain, gate, promote), both sides scored before and after. A rerun skips
    finished rounds.

    Examples:
      gendet coevolve out/demo/features --model models:/gendet@champion --tracking-uri sqlite:///out/demo/mlflow.db
      gendet coevolve out/features --family sdedit --rounds 3 --steps 40 --shots 64
    """

    features: Positional[str]
    """The feature store the champion was trained on."""
    model: str = "models:/gendet@champion"
    """The registered detector (models:/NAME@champion)."""
    family: str = "sdedit"
    """The zoo family whose generator co-evolves."""
    rounds: int = 3
    """Rounds to run (finished ones are skipped)."""
    out: str = "out/coevolve"
    """Output folder: round-K/ per round, coevolve.json, the SQLite MLflow store when MLFLOW_TRACKING_URI is unset."""
    tracking_uri: str | None = None
    """MLflow tracking URI of the registry holding --model (default: MLFLOW_TRACKING_URI; unset, a SQLite store under --out)."""
    steps: int = 20
    """Alignment steps per round."""
    lr: float = 3e-4
    """Alignment learning rate."""
    batch_size: int = 8
    """Alignment crops per step."""
    align_weight: float = 1.0
    """λ of 1 - cos(phi(G(x)), phi(x))."""
    fidelity_weight: float = 1.0
    """Weight of L1(G(x), x)."""
    train: str = "auto"
    """Parameters that train: auto, decoder or all."""
    crops_per_photo: int = 16
    """Real and fake crops per photo in each round's shards."""
    photos_per_split: int = 0
    """At most this many photos per split (0: all)."""
    align_crops_per_photo: int = 8
    """Training crops per photo for the alignment."""
    shots: int = 64
    """Fakes (and reals) of each round's subset the fix trains on."""
    held_out: tuple[str, ...] = ()
    """Families held out of every round (default: the store's subsets minus the champion's training
    subsets, FAMILY and its rounds)."""
    subset_name: str = ""
    """Round k's subset is NAME-rk (default: FAMILY); another name keeps a second run's subsets apart."""
    gate: GateConfig = field(default_factory=GateConfig)
    """The fix's promotion gate."""
    workers: Annotated[Workers, Flat] = field(default_factory=Workers)
    align_cpus: float = 1.0
    """CPUs of the alignment Ray task."""
    seed: int = 0
    """Seeds the alignment (round k: seed + k) and the shards' draws."""

    def __post_init__(self) -> None:
        from gendet.zoo.config import family_config

        check(self.rounds >= 1, f"--rounds {self.rounds}: give at least 1")
        check(self.shots >= 1 and self.align_cpus > 0, "--shots must be >= 1, --align-cpus > 0")
        family_config(self.family)  # an unknown family: one line, before any work
        align_config(self, 1)  # bad alignment settings: one line, before any work


def align_config(job: CoevolveJob, k: int):
    from gendet.coevolve.align import AlignConfig

    return AlignConfig(family=job.family, steps=job.steps, lr=job.lr, batch_size=job.batch_size,
                       align_weight=job.align_weight, fidelity_weight=job.fidelity_weight, train=job.train,
                       seed=job.seed + k, crops_per_photo=job.align_crops_per_photo)


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


def previous_generator(job: CoevolveJob, k: int) -> tuple[dict | None, dict[str, str]]:
    """(state dict of G_{k-1} or None for the zoo's weights, its identity for the lineage)."""
    from safetensors.torch import load_file

    from gendet.coevolve.lineage import file_digest, load_aligned
    from gendet.coevolve.rounds import round_dir
    from gendet.zoo.train import load_or_train

    if k == 1:
        path = load_or_train(job.family, progress=False)[2]["weights"]
        digest = file_digest(path)
        return None, {"parent_weights": path, "parent_weights_digest": digest, "base_weights": path,
                      "base_weights_digest": digest}
    path = gio.join(round_dir(job.out, k - 1), "generator.safetensors")
    _, lineage = load_aligned(path)
    return load_file(path), {"parent_weights": path, "parent_weights_digest": lineage["weights_digest"],
                             "base_weights": lineage["base_weights"], "base_weights_digest": lineage["base_weights_digest"]}


def aligned_generator(job: CoevolveJob, k: int, rdir: str, detector: Any, name: str, version: str, digest: str):
    """(G_k, its lineage): reused when a killed run aligned this round already, else aligned now in a Ray task."""
    import ray

    from gendet.coevolve.lineage import load_aligned, save_aligned
    from gendet.zoo.config import family_config
    from gendet.zoo.models import build_model

    weights = gio.join(rdir, "generator.safetensors")
    if os.path.isfile(weights):
        log.info("[round %d] reusing %s", k, weights)
        return (*load_aligned(weights), weights)
    state, parent = previous_generator(job, k)
    cfg = align_config(job, k)
    log.info("[round %d] aligning %s against %s v%s (%d steps, Ray task)", k, job.family, name, version, cfg.steps)
    got = ray.get(ray.remote(num_cpus=job.align_cpus)(_align).remote(cfg, detector, state))
    model = build_model(family_config(job.family))
    model.load_state_dict(got["state"])
    lineage = save_aligned(model.eval(), job.family, weights, {
        **parent, "round": k, "detector": {"uri": f"models:/{name}/{version}", "name": name, "version": version,
                                           "digest": digest, "method": detector.method, "encoder": detector.encoder},
        "align_config": to_dict(cfg), "metrics": got["summary"], "history": got["history"]})
    return model, lineage, weights


def run_round(job: CoevolveJob, k: int, client: Any, held_out: tuple[str, ...] | None) -> dict[str, Any]:
    from gendet.coevolve.rounds import held_out_summary, round_dir, round_subset
    from gendet.eval.refresh_state import model_digest
    from gendet.extract.config import ExtractConfig
    from gendet.mlops.coevolve import default_held_out
    from gendet.serve.loading import load_detector
    from gendet.zoo.shards import ZooShardsConfig, build_generator_shards
    from pipelines import fix
    from pipelines.extract import extract

    started = time.perf_counter()
    rdir, subset = round_dir(job.out, k), round_subset(job.subset_name or job.family, k)
    name, version = pinned(job.model, client)
    detector = load_detector(f"models:/{name}/{version}")
    digest_before = model_digest(detector)
    model, lineage, weights = aligned_generator(job, k, rdir, detector, name, version, digest_before)
    shards = gio.join(rdir, "shards")
    zoo_cfg = ZooShardsConfig(families=(), crops_per_photo=job.crops_per_photo, photos_per_split=job.photos_per_split,
                              seed=job.seed)
    if not gio.exists(gio.join(shards, "zoo_summary.json")):
        build_generator_shards(shards, zoo_cfg, family=job.family, subset=subset, model=model,
                               info={"weights": weights, "weights_digest": lineage["weights_digest"]})
    extracted = extract(ExtractConfig(shards=shards, features=job.features, encoder=detector.encoder,
                                      precision=detector.encoder_precision or "fp32", batch_size=256))
    if extracted.get("shards_failed"):
        raise GendetError(f"{shards}: {extracted['shards_failed']} shard(s) failed to extract; rerun to redo them")
    before = score_test(detector, job.features)
    fixed = gio.join(rdir, "fix", "fix.json")
    result = gio.read_json(fixed) if gio.exists(fixed) else fix.run(fix.FixJob(
        features=job.features, model=f"models:/{name}@champion", subsets=(subset,), shots=job.shots,
        out=gio.join(rdir, "fix"), workers=job.workers, gate=job.gate, tracking_uri=client.tracking_uri))
    name_after, version_after = pinned(f"models:/{name}@champion", client)
    after_det = load_detector(f"models:/{name}/{version_after}")
    after = score_test(after_det, job.features)
    held = held_out if held_out is not None else default_held_out(client, name, version, before, job.family)
    return {"subset": subset, "family": job.family, "generator": {
                "weights": weights, "weights_digest": lineage["weights_digest"],
                "parent_weights_digest": lineage["parent_weights_digest"], "metrics": lineage["metrics"]},
            "detector_before": {"name": name, "version": version, "digest": digest_before},
            "detector_after": {"name": name_after, "version": version_after, "digest": model_digest(after_det)},
            "fix": {k_: result.get(k_) for k_ in FIX_FIELDS},
            "caught_before": before.get(subset, {}).get("caught"), "caught_after": after.get(subset, {}).get("caught"),
            "base_family": {"before": before.get(job.family), "after": after.get(job.family)},
            "held_out": {"before": held_out_summary(before, held), "after": held_out_summary(after, held)},
            "rates_before": before, "rates_after": after, "seconds": round(time.perf_counter() - started, 1)}


def run(job: CoevolveJob) -> dict[str, Any]:
    """Every round not done yet (module docstring); returns coevolve.json's content."""
    from mlflow import MlflowClient

    from gendet.coevolve.rounds import is_done, read_round, write_round
    from gendet.eval.metrics import json_safe
    from gendet.mlops import tracking
    from gendet.mlops.coevolve import EXPERIMENT, log_round
    from pipelines._ray import init_ray, require_ray

    require_ray()
    if not gio.exists(job.features):
        raise GendetError(f"{job.features}: no feature store here; pass the store the champion was trained on")
    with tracking.tracking_uri(job.tracking_uri):
        uri = tracking.check_tracking(job.out)
        client = MlflowClient(uri)
        pinned(job.model, client)
        # before exporting the URI: with the SQLite default the experiment keeps its artifacts next to it
        tracking.use_experiment(job.out, EXPERIMENT)
        os.environ["MLFLOW_TRACKING_URI"] = uri  # models:/ loads, the fix's training run and the rounds' runs
        init_ray()
        records = []
        for k in range(1, job.rounds + 1):
            if is_done(job.out, k):
                log.info("[round %d] done before: skipped", k)
                records.append(read_round(job.out, k))
                continue
            record = json_safe(run_round(job, k, client, tuple(job.held_out) or None))
            tracking.use_experiment(job.out, EXPERIMENT)  # the fix's training moved MLflow elsewhere
            os.environ["MLFLOW_TRACKING_URI"] = uri
            record["mlflow_run_id"] = log_round(k, record)
            write_round(job.out, k, record)
            records.append({"round": k, **record})
            held = record["held_out"]
            log.info("[round %d] caught %s -> %s, held-out acc %s -> %s (%s s)", k, record["caught_before"],
                     record["caught_after"], held["before"]["acc"], held["after"]["acc"], record["seconds"])
    summary = {"rounds": records}
    gio.write_json_atomic(gio.join(job.out, "coevolve.json"), gio.redacted(summary))
    return summary


def main(job: CoevolveJob) -> int:
    run(job)
    log.info("rounds written to %s", gio.join(job.out, "coevolve.json"))
    return 0


JOB = _jobs.JobSpec(CoevolveJob, main)

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.coevolve"))
