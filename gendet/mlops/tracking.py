"""MLflow run helpers: where runs go, and what a training job logs.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set (a shared server, Databricks, ...), else a
SQLite store inside the job's output directory (``sqlite:///<out>/mlflow.db``, artifacts under
``<out>/mlartifacts``), so a job run on a laptop keeps its runs next to its outputs and
``mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db`` shows them. MLflow's own API does the
work; this module only names things consistently:

- params: the whole config, flattened (nested fields as ``outer.inner``, tuples as JSON text);
- metrics: each training job's loss per stage as ``loss/<job>`` (``loss/real.gendet``) with the
  stage's position as ``step``; per-subset results of every method as ``<method>/<subset>/<metric>``
  (e.g. ``gendet/sdv14/acc``) plus ``<method>/mean_acc``, ``<method>/mAP``, ...;
- artifacts: ``metrics.json`` files and PNG plots.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from gendet import GendetError
from gendet import io as gio

DEFAULT_EXPERIMENT = "gendet"
JOB_ARTIFACT = "job.json"  # the whole job a run ran (pipelines' typed job as a dict): what `gendet fix` retrains from
_METRIC_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")
# metrics.json keys that are per-subset numbers worth a metric each (counts are params of the data)
SUBSET_METRICS = ("acc", "real_acc", "fake_acc", "ap", "best_acc", "acc_calibrated",
                  "real_acc_calibrated", "fake_acc_calibrated")
SUMMARY_METRICS = ("mean_acc", "mAP", "mean_acc_calibrated", "calibrated_threshold")


def local_store(out_dir: str) -> tuple[str, str]:
    """(tracking URI, artifact location URI) of the SQLite store kept inside ``out_dir``."""
    from fsspec.utils import get_protocol

    # the protocol alone: a remote --out is refused here even where its fsspec backend is not installed
    fs, path = gio.fs_and_path(out_dir) if get_protocol(str(out_dir)) in ("file", "local") else (None, "")
    if fs is None or not gio.is_local(fs):
        raise GendetError(f"{out_dir}: a SQLite MLflow store needs a local output directory; "
                          "set MLFLOW_TRACKING_URI to a tracking server to log from here")
    root = Path(path).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # /proc/x, a file in the way, a read-only disk
        raise GendetError(f"--out {out_dir}: cannot write here ({exc.strerror or exc}); give a --out location this job "
                          "can write to") from None
    return f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()


def resolve_tracking_uri(out_dir: str | None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the SQLite store under ``out_dir``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if out_dir is None:
        raise GendetError("no MLflow store: set MLFLOW_TRACKING_URI or give an output directory")
    return local_store(out_dir)[0]


def check_server(uri: str | None = None, *, timeout: float = 3.0) -> None:
    """Fail in one line, within ``timeout`` seconds, when an http(s) tracking URI does not answer:
    MLflow's own client retries a refused connection for minutes, after the work is done. Any
    HTTP answer below 500 from ``/health`` counts (a proxy may guard it); other schemes pass."""
    import urllib.error
    import urllib.parse
    import urllib.request

    uri = uri if uri is not None else os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    health = parts._replace(netloc=parts.netloc.rpartition("@")[2], path=parts.path.rstrip("/") + "/health").geturl()
    try:
        with urllib.request.urlopen(health, timeout=timeout) as resp:
            status, reason = resp.status, ""
    except urllib.error.HTTPError as exc:
        status, reason = exc.code, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # refused, timed out, no such host
        status, reason = 0, str(getattr(exc, "reason", exc))
    if status == 0 or status >= 500:
        raise GendetError(f"MLflow tracking server {uri} does not answer ({reason}); start it or point "
                          "MLFLOW_TRACKING_URI at one that answers (unset, runs go to a SQLite store under a local --out)")


def check_tracking(out_dir: str | None, *, timeout: float = 3.0) -> str:
    """The tracking URI a job will log to, checked before any work: a remote ``--out`` without
    ``MLFLOW_TRACKING_URI`` is refused, and a tracking server must answer. Returns the URI."""
    uri = resolve_tracking_uri(out_dir)
    check_server(uri, timeout=timeout)
    return uri


def use_experiment(out_dir: str | None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the resolved store and experiment; returns the experiment id.

    With the SQLite default (or a ``sqlite:///`` URI the user names) the experiment is created with
    its artifacts under ``mlartifacts`` beside the database (MLflow would otherwise put them in
    ``./mlruns`` of the current dir).
    """
    from_user = os.environ.get("MLFLOW_TRACKING_URI")
    uri = resolve_tracking_uri(out_dir)
    mlflow.set_tracking_uri(uri)
    if not from_user:
        # set_tracking_uri also exports MLFLOW_TRACKING_URI; left there, this job's SQLite default
        # would pass for the user's choice and capture the next job's runs in this process
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        exp_id = found.experiment_id
    elif not from_user:
        exp_id = client.create_experiment(experiment, artifact_location=local_store(out_dir)[1])
    elif uri.startswith("sqlite:///"):  # a local store the user named: its artifacts beside it, as the default's
        artifacts = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=artifacts)
    else:
        exp_id = client.create_experiment(experiment)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@contextlib.contextmanager
def start_run(out_dir: str | None, *, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
              tags: Mapping[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """``with start_run(out): ...`` opens a run in the resolved store and closes it (FAILED on error)."""
    use_experiment(out_dir, experiment)
    with mlflow.start_run(run_name=run_name, tags=dict(tags or {})) as run:
        yield run


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and tuples become their JSON text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def log_config(cfg: Any) -> dict[str, Any]:
    """Log a config dataclass (or dict) as flattened params; returns what was logged."""
    from gendet.config import to_dict

    tree = cfg if isinstance(cfg, Mapping) else to_dict(cfg)
    params = gio.redacted(flatten(tree))
    mlflow.log_params(params)
    return params


def metric_key(*parts: str) -> str:
    """A metric name MLflow accepts, from parts such as (method, subset, metric)."""
    return "/".join(_METRIC_KEY_BAD.sub("_", str(p)) for p in parts)


def log_stage_history(history: Sequence[Mapping[str, Any]], prefix: str = "loss") -> int:
    """Log the trainer's per-stage rows (``gendet.method.gendet.trainer``: ``stage``, ``job``, ``mean_loss``) as
    ``loss/<job>`` curves whose step is the stage's position in the plan, so every job's curve
    shares one x-axis (pretrain = 0, r01.a = 1, ...). Returns the number of points logged."""
    steps: dict[str, int] = {}
    count = 0
    for row in history:
        step = steps.setdefault(str(row["stage"]), len(steps))
        mlflow.log_metric(metric_key(prefix, row["job"]), float(row["mean_loss"]), step=step)
        count += 1
    return count


def subset_metrics(method: str, report: Mapping[str, Any]) -> dict[str, float]:
    """Flat ``<method>/<subset>/<metric>`` and ``<method>/<summary>`` numbers of a metrics.json dict."""
    out: dict[str, float] = {}
    for subset, values in report.get("subsets", {}).items():
        for name in SUBSET_METRICS:
            if values.get(name) is not None:
                out[metric_key(method, subset, name)] = float(values[name])
    for name in SUMMARY_METRICS:
        if report.get(name) is not None:
            out[metric_key(method, name)] = float(report[name])
    return out


def log_reports(reports: Mapping[str, Mapping[str, Any]], *, artifact_dir: str = "metrics") -> dict[str, float]:
    """Log every method's metrics.json: its numbers as metrics and the file as an artifact."""
    logged: dict[str, float] = {}
    for method, report in reports.items():
        numbers = subset_metrics(method, report)
        mlflow.log_metrics(numbers)
        mlflow.log_dict(dict(report), f"{artifact_dir}/{method}/metrics.json")
        logged.update(numbers)
    return logged


def log_figure(fig: Any, name: str) -> None:
    """Log a matplotlib figure as a PNG artifact (``plots/<name>.png``)."""
    mlflow.log_figure(fig, f"plots/{name}.png")


@contextlib.contextmanager
def tracking_uri(uri: str | None) -> Iterator[None]:
    """Within the block MLflow logs to ``uri`` when one is given (a job's ``--tracking-uri``), as
    if ``MLFLOW_TRACKING_URI`` were set: this process and those it starts (Ray workers, servers)."""
    if not uri:
        yield
        return
    previous = os.environ.get("MLFLOW_TRACKING_URI")  # mlflow.set_tracking_uri keeps this in step
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:  # MLflow's own URI too, not only the environment: it takes precedence over it
        mlflow.set_tracking_uri(previous)  # None: unset, the environment variable with it
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def check_run(run_id: str) -> None:
    """A one-line error, before any work, when ``run_id`` is not a run of the tracking store."""
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_run(run_id)
    except MlflowException as exc:
        raise GendetError(f"--mlflow-run {run_id}: no such run in the tracking store ({exc.error_code}); "
                          "pass a run id of MLFLOW_TRACKING_URI's store") from None


def log_evaluation(run_id: str, report: Mapping[str, Any], table_text: str) -> None:
    """``gendet evaluate --mlflow-run``: metrics.json, the table and the headline numbers into that
    run (the client, not start_run: whatever experiment this process has active)."""
    from gendet.eval.metrics import json_safe

    client = MlflowClient()
    client.log_dict(run_id, json_safe(dict(report)), "evaluate/metrics.json")
    client.log_text(run_id, table_text, "evaluate/table.md")
    for key, value in (("eval_mean_acc", report.get("mean_acc")), ("eval_mAP", report.get("mAP")),
                       ("eval_mean_pixel_f1", report.get("mean_pixel_f1")),
                       ("eval_mean_pixel_iou", report.get("mean_pixel_iou"))):
        if value is not None:
            client.log_metric(run_id, key, float(value))
