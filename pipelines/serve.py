"""``gendet serve`` / ``python -m pipelines.serve``: a model online on Ray Serve.

The detector is a Serve deployment (``GendetDeployment``): each replica loads the model once (the
files the driver packed: an alias is pinned to its version, and replicas need no MLflow access)
with its encoder on the replica's GPU when it has one, and answers MLflow's request format
(``gendet.serve.request_format``: one client works against both servers) with the reply of every
gendet scorer. Requests are batched across clients (``@serve.batch``: up to ``--max-batch-size``
images, waiting at most ``--batch-wait-ms``), replicas autoscale between ``--min-replicas`` and
``--max-replicas``, and a health check scores a tiny image. ``build_app`` is the application
builder for ``serve run`` / ``serve deploy`` and KubeRay's RayService
(``import_path: pipelines.serve:build_app``; its ``args`` are this job's fields).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

from gendet.config import check
from gendet.serve.request_format import LIMITS
from pipelines import _jobs

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class ServeJob:
    """Serve a model online on Ray Serve: POST images (MLflow's JSON with base64 images, or one image's
    raw bytes) and get one reply per image (verdict, probability, band, model, encoder, error).

    Examples:
      gendet serve --model models:/gendet@champion                       # http://127.0.0.1:8000/
      gendet serve --model models:/gendet@champion --host 0.0.0.0 --num-gpus 1 --max-replicas 4
      serve run pipelines.serve:build_app model=models:/gendet@champion   # the same app, Ray's CLI
    """

    model: str = "models:/gendet@champion"
    """The model: models:/NAME@ALIAS (pinned to its version), models:/NAME/VERSION, runs:/RUN/PATH or a directory."""
    host: str = "127.0.0.1"
    """Address the HTTP proxy binds (0.0.0.0 to be reached from other machines)."""
    port: int = 8000
    route_prefix: str = "/"
    """Path the model answers on."""
    name: str = "gendet"
    """The Serve application's name."""
    num_gpus: float = 0.0
    """GPUs per replica (0: CPU)."""
    num_cpus: float = 1.0
    """CPUs per replica."""
    min_replicas: int = 1
    max_replicas: int = 1
    """Autoscaling bounds (equal: a fixed number of replicas)."""
    target_ongoing_requests: float = 8.0
    """Autoscaling target of requests in flight per replica."""
    max_ongoing_requests: int = 64
    """Requests a replica takes at once; more wait in the proxy."""
    max_batch_size: int = 32
    """Images scored together across requests (1: no batching)."""
    batch_wait_ms: float = 10.0
    """Most a request waits for others to fill a batch."""
    max_images: int = LIMITS["max_images"]
    """Images per request; more are refused (400)."""
    max_request_bytes: int = LIMITS["max_request_bytes"]
    """Bytes per request; more are refused (413)."""
    max_pixels: int = LIMITS["max_pixels"]
    """Pixels per image; larger ones are answered error too_large, unread."""
    allow_urls: bool = False
    """Fetch http(s) URLs sent in place of base64 (off: no requests to addresses a client picks)."""
    threshold: float | None = None
    """Override the model's calibrated threshold."""
    tracking_uri: str | None = None
    """MLflow tracking URI for models:/ and runs:/ (default: MLFLOW_TRACKING_URI)."""

    def __post_init__(self) -> None:
        check(1 <= self.port <= 65535, f"--port {self.port}: a TCP port")
        check(self.route_prefix.startswith("/"), f"--route-prefix {self.route_prefix}: must start with /")
        check(self.num_gpus >= 0 and self.num_cpus >= 0, "--num-gpus / --num-cpus: must be >= 0")
        check(1 <= self.min_replicas <= self.max_replicas, f"--min-replicas {self.min_replicas} / --max-replicas "
                                                           f"{self.max_replicas}: need 1 <= min <= max")
        check(self.max_batch_size >= 1 and self.batch_wait_ms >= 0, "--max-batch-size >= 1, --batch-wait-ms >= 0")
        check(self.max_images >= 1 and self.max_request_bytes >= 1 and self.max_pixels >= 1, "limits must be >= 1")
        check(self.threshold is None or 0 <= self.threshold <= 1, f"--threshold {self.threshold}: in [0, 1]")


class Replica:
    """What a replica holds (plain Python, so it runs and is tested without Serve): the scorer, the
    limits, and the request handling of one batch."""

    def __init__(self, files: dict[str, bytes], model: str, options: dict[str, Any]):
        from gendet.serve.batch.scoring import load_files
        from gendet.serve.loading import scorer_for
        from gendet.serve.pyfunc import load_device

        detector, bundled = load_files(files)
        self.limits = {k: int(options.get(k, v)) for k, v in LIMITS.items()}
        self.allow_urls = bool(options.get("allow_urls", False))
        self.scorer = scorer_for(detector, device=load_device(str(options.get("device", "auto"))),
                                 threshold=options.get("threshold"), max_pixels=self.limits["max_pixels"],
                                 model=model, bundled=bundled)

    def parse(self, body: bytes, content_type: str) -> tuple[list, dict]:
        from gendet.serve.request_format import parse_request

        return parse_request(body, content_type, limits=self.limits, allow_urls=self.allow_urls,
                             masks_allowed=self.scorer.has_masks)

    def score(self, requests: list[list]) -> list[list[dict]]:
        """Several requests' items scored together (one encoder call), split back per request."""
        flat = [item for items in requests for item in items]
        replies = self.scorer.score_bytes(flat) if flat else []
        out, at = [], 0
        for items in requests:
            out.append(replies[at:at + len(items)])
            at += len(items)
        return out

    def healthy(self) -> None:
        """Raise unless a tiny image scores to a probability (Serve restarts a replica that fails it)."""
        from gendet.serve.pyfunc import example_image

        (reply,) = self.scorer.score_bytes([example_image()])
        if reply["verdict"] == "error":
            raise RuntimeError(f"health check: the model cannot score ({reply['error']})")


def deployment(job: ServeJob) -> Any:
    """The Serve deployment class, configured by ``job`` (Ray imported only here)."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    from gendet.serve.request_format import BadRequest, reply_body

    autoscaling = None if job.min_replicas == job.max_replicas else {
        "min_replicas": job.min_replicas, "max_replicas": job.max_replicas,
        "target_ongoing_requests": job.target_ongoing_requests}

    @serve.deployment(name="GendetDeployment", num_replicas=job.min_replicas if autoscaling is None else "auto",
                      autoscaling_config=autoscaling, max_ongoing_requests=job.max_ongoing_requests,
                      ray_actor_options={"num_gpus": job.num_gpus, "num_cpus": job.num_cpus},
                      health_check_period_s=10, health_check_timeout_s=30)
    class GendetDeployment:
        def __init__(self, files: dict[str, bytes], model: str, options: dict[str, Any]):
            self.replica = Replica(files, model, options)
            self.score_batch.set_max_batch_size(int(options["max_batch_size"]))
            self.score_batch.set_batch_wait_timeout_s(float(options["batch_wait_ms"]) / 1000)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
        async def score_batch(self, requests: list[list]) -> list[list[dict]]:
            # the encoder runs off the event loop: health checks and new requests are still taken meanwhile
            return await asyncio.get_running_loop().run_in_executor(None, self.replica.score, requests)

        async def __call__(self, request: Request) -> Response:
            try:
                items, params = self.replica.parse(await request.body(), request.headers.get("content-type", ""))
            except BadRequest as exc:
                return Response(str(exc), status_code=exc.status, media_type="text/plain")
            if params.get("masks"):  # masks are large and per request: scored alone, not batched
                replies = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: self.replica.scorer.score_bytes(items, masks=True))
            else:
                replies = await self.score_batch(items)
            return Response(reply_body(replies), media_type="application/json")

        def check_health(self) -> None:
            self.replica.healthy()

    return GendetDeployment


def build_app(args: dict[str, Any]) -> Any:
    """The Serve application for ``serve run pipelines.serve:build_app model=...`` and RayService's
    ``import_path``: ``args`` are ServeJob's fields (strings are converted)."""
    from gendet.mlops import tracking
    from gendet.serve.batch.scoring import model_files

    fields = {f.name: f for f in dataclasses.fields(ServeJob)}
    unknown = sorted(set(args) - set(fields))
    check(not unknown, f"build_app args {unknown}: not fields of gendet serve ({', '.join(sorted(fields))})")
    job = ServeJob(**{k: _converted(v, fields[k].type) for k, v in args.items()})
    with tracking.tracking_uri(job.tracking_uri):
        files, label, _ = model_files(job.model)
    options = {**{k: getattr(job, k) for k in ("max_images", "max_request_bytes", "max_pixels", "allow_urls",
                                               "threshold", "max_batch_size", "batch_wait_ms")},
               "device": "cuda" if job.num_gpus > 0 else "auto"}
    return deployment(job).bind(files, label, options)


def _converted(value: Any, hint: Any) -> Any:
    """A ``serve run key=value`` string as the field's type."""
    if not isinstance(value, str):
        return value
    text = str(hint)
    if "bool" in text:
        return value.lower() in ("1", "true", "yes")
    if "None" in text and value.lower() in ("", "none", "null"):
        return None
    if "int" in text:
        return int(value)
    if "float" in text:
        return float(value)
    return value


def serve_forever(job: ServeJob) -> None:
    """Start Serve's proxy on --host:--port, deploy the app, answer until SIGINT/SIGTERM."""
    from ray import serve

    from pipelines._ray import init_ray

    app = build_app({f.name: getattr(job, f.name) for f in dataclasses.fields(ServeJob)})
    init_ray()
    serve.start(http_options={"host": job.host, "port": job.port})
    serve.run(app, name=job.name, route_prefix=job.route_prefix, blocking=False)
    log.info("serving %s at http://%s:%d%s (Ctrl-C stops)", job.model, job.host, job.port, job.route_prefix)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()


def main(job: ServeJob) -> int:
    serve_forever(job)
    return 0


JOB = _jobs.JobSpec(ServeJob, main)

if __name__ == "__main__":
    sys.exit(_jobs.run(JOB, prog="python -m pipelines.serve"))
