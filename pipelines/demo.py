"""``gendet demo``: the whole system, offline, on one machine, in one command.

photo corpus (every installed source: the pip packages and Debian's mate-backgrounds) -> generator
zoo -> WebDataset shards (native crops of 64, 128 and 256 px, half of each label's images JPEG) -> Ray
Data extraction (``spectrum:v2``, the offline encoder on native pixels; degraded variants for Table
4) -> Ray Train: GenDet and the four baselines on one family (the role SD v1.4 plays in GenImage) ->
per-family evaluation of every method -> MLflow registration and the promotion gate -> ``predict``
on a few files from ``models:/gendet@champion`` -> a new family's shards arrive: ``refresh`` extracts
only them and scores the champion on them; when the new family slips, ``refresh --fix`` retrains
with a few of its images (``--fix-shots``), recalibrates, registers a challenger and runs the gate
over every known family, which promotes it only if no old family falls by more than 2 points. It
ends with the table and the path of ``OUT/report.md``. With ``--gamma`` (the default, except with
``--small``) a step after Table 4 trains GAMMA (``pipelines._demo_gamma``: manipulations of the training
family's reals, a token variant of the store, ``train-gamma`` registered as ``gendet-gamma``) and the
report puts it beside GenDet, with pixel F1/IoU and overlays of a few inpaint_f8 fakes.

Every step is the same code as its verb, run as a job value (``ExtractConfig``, ``TrainJob``,
``GammaTrainJob``, ``RefreshJob``): this module only chooses their fields. Reruns reuse what is
there: zoo shards whose summary matches, feature shards already extracted (the store is
incremental); training, evaluation and refresh run again (a rerun's refresh finds nothing new and
says so).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from gendet import io as gio
from gendet.config import check
from pipelines import _jobs
from pipelines.fix import DEFAULT_SHOTS

log = logging.getLogger(__name__)
TRAIN_FAMILY = "ae_nearest_f8"  # SD's VAE decoder upsamples by nearest + conv at f8: the SD v1.4 role
NEW_FAMILY = "sdedit"           # arrives last, for the refresh step: diffusion, unlike anything trained on
FIX_SHOTS = DEFAULT_SHOTS       # refresh --fix's default, chosen on val (experiments/results/fix-shots-cpu2-refit.md)
SAMPLE_FAMILY = "vq_f4"         # where the few files that `predict` scores come from
ENCODER = "spectrum:v2"  # native pixels: v1 upscaled every crop under 128 px, stamping one bicubic filter on them
# The demo's world (issue 11): native crops at several sizes (never upscaled), and half of *each* label's
# images stored as JPEG (q 70-95), so neither size nor container says real or fake ("Fake or JPEG?").
CROP_SIZES, SMALL_CROP_SIZES = (64, 128, 256), (64, 128)
# Crops per photo and family at 64 px, fewer at larger sizes (ZooShardsConfig.crops_at): 4, 2 and 1 at full size.
# spectrum:v2 costs the same per image at every size (a 64 px crop is tiled to its 256 px canvas), and the
# 256 px crops dominate the zoo's regeneration: 6 (6, 3, 2: 9,086 images, not 5,782) costs ~1.6x both.
CROPS_PER_PHOTO, SMALL_CROPS_PER_PHOTO = 4, 3
# The gate decides on val (paired per family): ~500 val images per family tell a 5-point fall from a
# retrain's noise (experiments/results/gate-power.md), so val photos give 4x the crops (~560 per family).
VAL_CROPS_PER_PHOTO = 16
JPEG_FRACTION = 0.5
# GenImage's Table 4 protocol on the multi-size crops, four variants for time (each costs a whole extraction):
# blur:5 is left out (blur:3 already erases the spectral fingerprints for every method, ~50 %), and so is
# resize:64, the smallest side v2 reads natively, which leaves the 64 px crops (over half the images) as
# they are. The note is the report's too.
DEGRADE_NOTE = (
    "`resize:N` sets the shorter side to N px, so on crops of 64-256 px no one value is GenImage's 1/2 and 2/7 "
    "of the side. resize:32 takes every crop (64, 128 and 256 px: 1/2, 1/4 and 1/8 of the side) under "
    "spectrum:v2's 64 px block, which v2 then upsamples (bicubic), as GenImage's protocol lets the detector's "
    "preprocessing scale small images back up.")
DEGRADES = ("jpeg:65", "jpeg:30", "blur:3", "resize:32")


@dataclass(frozen=True, kw_only=True, slots=True)
class DemoJob:
    """The whole system offline, on one machine: photos -> generator zoo -> shards -> Ray Data
    features -> Ray Train (GenDet and its baselines) -> per-family evaluation -> MLflow registry and
    gate -> predict -> a new family arrives: refresh alerts, fix retrains, gates and promotes ->
    OUT/report.md. Reruns reuse the shards and features already made.

    Examples:
      gendet demo                        # 10-25 min on 2 cores
      gendet demo --small --no-gamma     # CI's size
      gendet demo --out out/demo2 --no-fix --train-family vq_f4
      gendet demo --seed 1 --out out/demo-seed1   # another world: photo split, draws, initialisation
    """

    out: str = "out/demo"
    """Output folder: shards, features, the MLflow store, the report."""
    small: bool = False
    """A reduced size for CI: few photos, 2 rotations, 2 degradations, no GAMMA."""
    train_family: str = TRAIN_FAMILY
    """The family GenDet trains on (SD v1.4's role in GenImage)."""
    new_family: str = NEW_FAMILY
    """The family that arrives at the end (refresh)."""
    num_workers: int = 1
    """Ray Train workers."""
    rotations: int | None = None
    """GenDet rotations (default: 10; --small: 2)."""
    degrade: bool = True
    """The degraded extractions and Table 4."""
    fix: bool = True
    """When the new family slips, refresh retrains with --fix-shots of its images, gates and promotes
    (--no-fix: it only alerts)."""
    fix_shots: int = FIX_SHOTS
    """Fakes (and as many reals) of the new family the fix trains on."""
    gamma: bool = True
    """GAMMA beside GenDet: manipulations, token extraction, train-gamma (registered as gendet-gamma),
    pixel metrics and overlays (--small runs without it)."""
    seed: int = 0
    """The world's and the training's seed: photo split, crop, mask and format draws, manipulations,
    initialisation (0: the committed report's world). Another seed needs another --out."""

    def __post_init__(self) -> None:
        from gendet.zoo.config import parse_families

        parse_families(f"{self.train_family},{self.new_family}")  # unknown names fail here, before any work
        check(self.train_family != self.new_family,
              "--train-family and --new-family must differ: the new family is the one never seen")
        check(self.num_workers >= 1 and self.fix_shots >= 1, "--num-workers and --fix-shots must be >= 1")
        check(self.rotations is None or self.rotations >= 1, f"--rotations {self.rotations}: must be >= 1")


class Steps:
    """Numbered step banners with timings (the heavy steps show their own progress bars)."""

    def __init__(self, total: int):
        self.total, self.index, self.times = total, 0, {}
        self.started = time.perf_counter()

    def __call__(self, name: str):
        self.index += 1
        log.info("[%d/%d] %s", self.index, self.total, name)
        self._name, self._t = name, time.perf_counter()
        return self

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.times[self._name] = round(time.perf_counter() - self._t, 1)
        log.info("    done in %.1f s", self.times[self._name])


def zoo_shards(out: str, families: list[str], small: bool, seed: int = 0, features: str | None = None) -> dict:
    """Write the zoo's shards for ``families`` unless a matching summary says they are there. A
    world of another config (another --seed) under an --out whose features exist is refused: the
    store would mix two worlds under the same shard names."""
    from gendet.config import to_json
    from gendet.zoo.shards import ZooShardsConfig, build_zoo_shards, written_config

    crops = SMALL_CROPS_PER_PHOTO if small else CROPS_PER_PHOTO
    cfg = ZooShardsConfig(families=tuple(families), photos_per_split=4 if small else 0, crops_per_photo=crops,
                          val_crops_per_photo=4 * crops if small else VAL_CROPS_PER_PHOTO,
                          crop_sizes=SMALL_CROP_SIZES if small else CROP_SIZES, jpeg_fraction=JPEG_FRACTION, seed=seed)
    made = written_config(out) if features and gio.exists(features) else None
    if made is not None and made != json.loads(to_json(cfg)):
        from gendet import GendetError

        raise GendetError(f"{out}: shards of another demo world (seed {made.get('seed')}, or an older version's "
                          f"config) whose features are in {features}; pass another --out, or delete it to rebuild")
    return build_zoo_shards(out, cfg, reuse=True)


def extract_all(shards: str, features: str, degrades: tuple[str, ...]) -> dict[str, dict]:
    from gendet.extract.config import ExtractConfig
    from gendet.extract.runner import format_summary
    from pipelines.extract import extract

    summaries = {}
    for degrade in ("", *degrades):
        log.info("    variant %s", degrade or "clean")
        summaries[degrade] = extract(ExtractConfig(shards=shards, features=features, encoder=ENCODER,
                                                   degrade=degrade, batch_size=256))
        log.info("    %s", format_summary(summaries[degrade]).replace("\n", "\n    "))
    return summaries


def train_job(features: str, out: str, job: DemoJob):
    from gendet.method.gendet.config import preset
    from pipelines._common import Workers
    from pipelines.train import TrainJob

    rotations = job.rotations or (2 if job.small else 10)
    return TrainJob(features=features, train=preset("demo", train_subsets=(job.train_family,), rotations=rotations,
                                                    seed=job.seed),
                    eval_splits=("test",), encoder=ENCODER, out=out, name=f"demo-{int(time.time())}", register="gendet",
                    workers=Workers(num_workers=job.num_workers, cpus_per_worker=1.0))


def degraded_reports(features: str, detectors_dir: str, degrades: tuple[str, ...], methods: tuple[str, ...]) -> dict:
    """Table 4 input: every method on the test split of each degraded variant."""
    from gendet.features.store import resolve_variant
    from gendet.method.gendet.detector import Detector
    from pipelines.evaluate import evaluate_store

    detectors = {m: Detector.load(gio.join(detectors_dir, m)) for m in methods}
    out = {}
    for degrade in ("", *degrades):
        variant = resolve_variant(features, encoder=ENCODER, degrade=degrade)
        out[degrade] = evaluate_store(detectors, variant, ("test",))[0]
    return out


def refresh_job(shards: str, features: str, out: str, model: str, job: DemoJob):
    from pipelines.refresh import RefreshJob

    return RefreshJob(shards=shards, features=features, model=model, out=out, batch_size=256, fix=job.fix,
                      fix_shots=job.fix_shots, fix_out=gio.join(out, "fix"))


def run(job: DemoJob) -> dict[str, Any]:
    """Every step (module docstring); returns {"report": OUT/report.md, "headline": its summary line}."""
    from gendet.data.shards import export_samples
    from gendet.eval.report import DemoReport, write_demo_report
    from gendet.method.gendet.config import METHODS
    from gendet.serve.predict import predict
    from gendet.zoo.config import parse_families, same_generator
    from pipelines import refresh, train
    from pipelines._ray import require_ray

    require_ray()
    out = os.path.abspath(job.out)
    families = [f for f in parse_families("all") if f != job.new_family]
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the demo keeps its runs in OUT/mlflow.db
    shards, features, incoming = (gio.join(out, d) for d in ("shards", "features", "incoming"))
    degrades = () if not job.degrade else (DEGRADES[::3] if job.small else DEGRADES)
    gamma = job.gamma and not job.small  # small: CI's time
    step = Steps(9 if gamma else 8)

    with step(f"photo corpus and generator zoo -> shards ({len(families)} families)"):
        zoo = zoo_shards(shards, families, job.small, job.seed, features)
        log.info("    %d photos: %s", zoo["photos"], json.dumps(zoo["corpus"]["found"]))
    with step(f"Ray Data extraction, {ENCODER}, clean + {len(degrades)} degraded variants"):
        extracted = extract_all(shards, features, degrades)
    with step(f"Ray Train: GenDet and 4 baselines on {job.train_family}, MLflow, registry and gate"):
        summary = train.run(train_job(features, out, job))
        log.info("    %s", summary["table"].replace("\n", "\n    "))
    with step("Table 4: every method on the degraded variants"):
        by_degrade = degraded_reports(features, gio.join(out, "detectors"), degrades, METHODS)
    gammas: dict = {}
    if gamma:
        from pipelines._demo_gamma import run_gamma

        with step(f"GAMMA: manipulations of {job.train_family}, token extraction, train-gamma, overlays"):
            gammas = run_gamma(out, shards, features, job.train_family, ENCODER, job.num_workers, job.seed)
    # The gate may refuse (its real-image floor): then the demo goes on with the challenger, and says so.
    model = f"models:/gendet@{'champion' if summary['gate']['promoted'] else 'challenger'}"
    with step(f"predict: a few files with {model}"):
        family = SAMPLE_FAMILY if SAMPLE_FAMILY in families else job.train_family
        files = export_samples(gio.glob(shards, f"{family}-*.tar"), gio.join(out, "samples"))
        predictions = predict(model, files)
        gio.write_bytes_atomic(gio.join(out, "predictions.jsonl"), "".join(json.dumps(p) + "\n" for p in predictions).encode())
        for row in predictions:
            log.info("    %s", json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    with step(f"a new family arrives: {job.new_family} -> shards"):
        zoo_shards(incoming, [job.new_family], job.small, job.seed)
    fixing = f", and fix it ({job.fix_shots} shots: retrain, gate, promote)" if job.fix else ""
    with step(f"refresh: extract only the new shards, score the champion, alert if it slips{fixing}"):
        fresh = refresh.run(refresh_job(incoming, features, out, model, job))  # also writes OUT/refresh.json
        log.info("    %s", (fresh.get("table") or "nothing new").replace("\n", "\n    "))
    with step("report"):
        report_url, headline = write_demo_report(out, DemoReport(
            train_family=job.train_family, new_family=job.new_family, zoo=zoo, extracted=extracted, summary=summary,
            by_degrade=by_degrade, predictions=predictions, predictions_model=model, refresh=fresh, times=step.times,
            degrade_note=DEGRADE_NOTE, gamma=gammas, overlays=gammas.get("overlays", ""),
            seen_generator=tuple(f for f in families if same_generator(f, job.train_family)),
            overlays_note=gammas.get("overlays_note", "")))
    return {"report": report_url, "headline": headline, "seconds": time.perf_counter() - step.started, "out": out}


def main(job: DemoJob) -> int:
    result = run(job)
    _jobs.emit(f"\n{result['headline']}\nreport: {result['report']}\nMLflow: mlflow ui --backend-store-uri "
               f"sqlite:///{result['out']}/mlflow.db (total {result['seconds']:.0f} s)")
    return 0


JOB = _jobs.JobSpec(DemoJob, main)

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.demo"))
