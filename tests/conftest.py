"""Shared test fixtures. Everything is real: a local Ray, real tar shards, real Parquet.

Tests run on CPU only (``CUDA_VISIBLE_DEVICES=""``) and never touch the network.
"""

from __future__ import annotations

import os
import sys

# Tests mirror the package (tests/data, tests/serve, ...) and import with --import-mode=importlib,
# so no test folder is a package; shared helpers live in tests/helpers/, importable from here.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# The test Ray is alone on this machine: every port on 127.0.0.1 (see pipelines/_ray.py).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest

# Ray on 2 cores: Train workers and Data tasks compete for CPUs and can wait on each other forever,
# so the test cluster advertises more logical CPUs than the machine has cores.
RAY_TEST_CPUS = 8


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the whole session (127.0.0.1, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=RAY_TEST_CPUS, include_dashboard=False, _node_ip_address="127.0.0.1",
                 configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------------------------------------- MLflow
# (added for tests/test_tracking.py, test_registry.py, test_pyfunc.py, test_predict.py)

from helpers.processes import free_port, mlflow_server_at, stop_process, wait_http  # noqa: E402 (shared with tests/pipelines)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts); yields its URI."""
    root = tmp_path_factory.mktemp("mlflow_server")
    with mlflow_server_at(root, str(root / "artifacts")) as uri:
        yield uri


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    """A real S3 server (moto) on 127.0.0.1 with one bucket; this process's environment points
    s3fs, boto3 and MLflow at it for the session (and so every Ray worker and job started after).
    Yields {"endpoint": URL, "bucket": NAME, "env": the variables set}."""
    from helpers.s3 import make_bucket, s3_env, start_moto

    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    log = open(root / "moto.log", "wb")
    proc = start_moto(port, log)
    endpoint = f"http://127.0.0.1:{port}"
    saved = dict(os.environ)
    try:
        wait_http(f"{endpoint}/moto-api/", proc, timeout=60)
        env = s3_env(endpoint)
        os.environ.update(env)
        make_bucket(endpoint, "gendet-test")
        yield {"endpoint": endpoint, "bucket": "gendet-test", "env": env}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stop_process(proc)
        log.close()


# ---------------------------------------------------------------------------------------------- detector

@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory) -> list:
    """Six small real image files (PNG and JPEG: noise, gradients, blocks) in one folder."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("tiny_images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        h, w = 40 + 8 * i, 56 - 4 * i
        if i % 3 == 0:
            pixels = rng.integers(0, 256, (h, w, 3))
        elif i % 3 == 1:
            ramps = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
            pixels = np.stack([*ramps, np.full((h, w), 40.0 * i)], -1)
        else:
            pixels = np.kron(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
        path = folder / f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def tiny_detector_dir(tmp_path_factory, tiny_images) -> str:
    """A saved ``gendet``-method Detector (seeded random init) over the offline ``spectrum:v1``
    encoder, its threshold the median score of ``tiny_images`` (so some are called fake, some not)."""
    import numpy as np
    import torch
    from PIL import Image

    from gendet.encoders.registry import load_encoder
    from gendet.method.gendet.detector import Detector, build_method_nets
    from gendet.method.gendet.networks import Arch

    torch.manual_seed(0)
    encoder = load_encoder("spectrum:v1")
    arch = Arch(feature_dim=encoder.dim, layers=1, heads=2)
    detector = Detector(method="gendet", arch=arch, nets=build_method_nets("gendet", arch),
                        encoder=encoder.name, encoder_weights=encoder.weights_ref,
                        preprocess_hash=encoder.preprocess_hash, threshold=0.5, target_fpr=0.05)
    batch = torch.stack([encoder.preprocess(Image.open(p).convert("RGB")) for p in tiny_images])
    detector.threshold = float(np.median(detector.score(encoder(batch))))
    out = str(tmp_path_factory.mktemp("detector") / "detector")
    detector.save(out)
    return out


@pytest.fixture
def torch_one_thread():
    """One torch thread while a test trains: on 2 shared cores, more threads mostly wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_scores(tiny_images, tiny_detector_dir) -> dict:
    """{image path: Detector.score of its spectrum:v1 features}, computed without gendet.serve.predict."""
    import torch
    from PIL import Image

    from gendet.encoders.registry import load_encoder
    from gendet.method.gendet.detector import Detector

    encoder, detector = load_encoder("spectrum:v1"), Detector.load(tiny_detector_dir)
    batch = torch.stack([encoder.preprocess(Image.open(p).convert("RGB")) for p in tiny_images])
    return dict(zip(map(str, tiny_images), detector.score(encoder(batch)).tolist()))


# ---------------------------------------------------------------------------------------------- Ray cluster

def wait_dashboard(address: str, head, timeout: float = 180) -> None:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, f"ray start exited with {head.returncode}"
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=5):
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # up, and asking for Ray's auth token (the `ray job` CLI sends it)
                return
            time.sleep(0.5)
        except Exception:  # noqa: BLE001 - not up yet (refused, reset, half-started server)
            time.sleep(0.5)
    raise AssertionError(f"the Ray dashboard at {address} did not come up in {timeout:.0f} s")


def wait_job_agent(address: str, env: dict, timeout: float = 240) -> None:
    """Block until the cluster accepts a job. The dashboard answers before the node's job agent has
    registered; a submit in that window fails with "No available agent to submit job" (seen in CI on
    2 loaded cores), so a trivial job is submitted until one runs."""
    import subprocess
    import time

    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        probe = subprocess.run(["ray", "job", "submit", "--address", address, "--", "python", "-c", "pass"],
                               env=env, capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            return
        last = (probe.stdout + probe.stderr)[-800:]
        if "No available agent" not in last:
            break
        time.sleep(2)
    raise AssertionError(f"the Ray cluster at {address} accepts no job: {last}")


@pytest.fixture(scope="session")
def ray_head():
    """A real ``ray start --head`` on 127.0.0.1 for ``ray job submit`` tests; yields (dashboard
    address, environment for the ``ray`` CLI; its ``GENDET_TEST_METRICS_PORT`` is the head's metrics
    port). Stopped through its own process group, since ``ray stop`` would stop every Ray on the machine."""
    import secrets
    import shutil
    import subprocess
    import tempfile

    port, dash, client, agent, metrics = (free_port() for _ in range(5))
    temp_dir = tempfile.mkdtemp(prefix="gdrj", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # Ray >= 2.5x starts clusters with token auth; the `ray job` CLI must be told to send the token.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "CUDA_VISIBLE_DEVICES": "", "RAY_AUTH_MODE": "token"}
    if not os.path.exists(os.path.expanduser("~/.ray/auth_token")):  # a fresh machine: a token for this test cluster
        env.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["GENDET_TEST_METRICS_PORT"] = str(metrics)  # the head's Prometheus endpoint: http://127.0.0.1:PORT/metrics
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "8",
         "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
         "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent), "--temp-dir", temp_dir,
         "--metrics-export-port", str(metrics)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        wait_dashboard(address, head)
        wait_job_agent(address, env)
        yield address, env
    finally:
        stop_process(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
