"""``gendet predict`` / ``python -m pipelines.predict``: score images, folders or URLs with a model,
one JSON line per image (``gendet.serve.predict``: what each line holds, how inputs are read)."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import Annotated

import tyro

from gendet import GendetError
from gendet import io as gio
from gendet.config import check
from pipelines import _jobs

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class PredictJob:
    """Score images, folders (recursive) or URLs with a trained model: one JSON line per image
    (path, score = P(fake), is_fake, threshold; GAMMA models also fake_fraction and, with --mask-dir,
    a mask PNG); an unreadable item gets an error instead of a score and the others are still scored.

    Examples:
      gendet predict photo.jpg uploads/ --model models:/gendet@champion
      gendet predict s3://bucket/new/ --model out/train/detectors/gendet --out out/predict
      gendet predict img.png --model models:/gendet-gamma@champion --mask-dir out/masks
    """

    inputs: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="PATH_OR_URL")]
    """Images, folders (searched recursively) or fsspec URLs."""
    model: str = "models:/gendet@champion"
    """The model: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/PATH or a model directory."""
    batch_size: int = 32
    """Images encoded together."""
    out: str | None = None
    """Output folder: OUT/predictions.jsonl instead of stdout."""
    device: str = "cpu"
    """Torch device of the encoder (the small heads run on CPU)."""
    threshold: float | None = None
    """Override the model's calibrated threshold."""
    mask_dir: str | None = None
    """GAMMA models: write DIR/<image>.mask.png (255 = predicted generated) and DIR/<image>.overlay.png;
    each line names its mask."""
    tracking_uri: str | None = None
    """MLflow tracking URI for models:/ and runs:/ (default: MLFLOW_TRACKING_URI)."""

    def __post_init__(self) -> None:
        check(bool(self.inputs), "PATH_OR_URL: give at least one image, folder or URL")
        check(self.batch_size >= 1, f"--batch-size {self.batch_size}: must be >= 1")
        check(self.threshold is None or 0.0 <= self.threshold <= 1.0,
              f"--threshold {self.threshold}: a probability, in [0, 1]")


def run(job: PredictJob, emit=_jobs.emit) -> int:
    """Score every input; each line goes to ``emit`` (stdout) or OUT/predictions.jsonl. Returns how
    many images were scored (none: a one-line error)."""
    from gendet.mlops import tracking
    from gendet.serve.loading import REGISTRY_SCHEMES, load_scorer
    from gendet.serve.predict import iter_predictions

    if job.out:  # before any scoring: a folder that cannot be written would lose every result
        gio.check_writable(job.out, "--out")
    with tracking.tracking_uri(job.tracking_uri):
        if job.model.startswith(REGISTRY_SCHEMES):
            tracking.check_server()  # seconds, not MLflow's minutes of retries against a dead server
        scorer = load_scorer(job.model, device=job.device, threshold=job.threshold, masks=bool(job.mask_dir))
        lines, scored = [], 0
        for row in iter_predictions(scorer, job.inputs, batch_size=job.batch_size, mask_dir=job.mask_dir):
            scored += row["verdict"] != "error"
            line = gio.redact(json.dumps(row, allow_nan=False))  # strict JSON: a non-finite score is an error row already
            if job.out:
                lines.append(line)
            else:
                emit(line)
    if job.out:
        url = gio.join(job.out, "predictions.jsonl")
        gio.write_bytes_atomic(url, "".join(f"{line}\n" for line in lines).encode("utf-8"))
        log.info("%d predictions written to %s", len(lines), url)
    if not scored:
        raise GendetError(f"no image could be scored among {', '.join(job.inputs)[:200]}; "
                          "see the error of each item and pass readable images")
    return scored


def main(job: PredictJob) -> int:
    run(job)
    return 0


JOB = _jobs.JobSpec(PredictJob, main)

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.predict"))
