"""``gendet serve``: the model on a real Ray Serve, real HTTP on 127.0.0.1. Good, broken and
oversized images, raw bytes and MLflow's JSON; the scores equal ``predict``'s; it keeps answering
under a bounded load; every socket it opens listens on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from gendet.serve.predict import predict
from helpers.processes import free_port, stop_process, wait_http


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def images_body(blobs: list[bytes], **extra) -> bytes:
    return json.dumps({"inputs": {"image": [base64.b64encode(b).decode() for b in blobs]}, **extra}).encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_detector_dir):
    """``gendet serve`` in its own process (a private Ray: RAY_ADDRESS=local), small limits."""
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "RAY_ADDRESS": "local", "CUDA_VISIBLE_DEVICES": ""}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.serve", "--model", tiny_detector_dir, "--port", str(port),
                                 "--max-images", "4", "--max-request-bytes", "40000", "--max-batch-size", "8",
                                 "--batch-wait-ms", "20"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(f"http://127.0.0.1:{port}/-/healthz", proc, timeout=240)
        for _ in range(120):  # the proxy answers before the replica is up
            if post(url, images_body([]))[0] == 200:
                break
            time.sleep(1)
        yield url, proc
    finally:
        stop_process(proc)
        if proc.returncode not in (0, -15):
            print(log.read_text()[-3000:])


def test_served_replies_equal_predicts_and_bad_input_is_an_error_row_or_a_refusal(served, tiny_images,
                                                                                  tiny_detector_dir, tmp_path):
    url, _ = served
    blobs = [p.read_bytes() for p in tiny_images[:3]]
    status, body = post(url, images_body(blobs + [b"not an image"]))
    assert status == 200
    rows = json.loads(body)["predictions"]
    expected = predict(tiny_detector_dir, [str(p) for p in tiny_images[:3]])
    for row, want in zip(rows, expected):
        assert row["verdict"] == want["verdict"] and row["probability"] == pytest.approx(want["probability"], rel=1e-5)
        assert row["model"] == tiny_detector_dir and row["encoder"] == "spectrum:v1" and row["band"] == want["band"]
    assert rows[3]["verdict"] == "error" and rows[3]["error"].startswith("not_an_image") and rows[3]["probability"] is None
    # one image's raw bytes, as an upload path sends them
    status, body = post(url, blobs[1], "image/png")
    assert status == 200 and json.loads(body)["predictions"][0]["probability"] == pytest.approx(expected[1]["probability"],
                                                                                                 rel=1e-5)
    # the same body as MLflow's /invocations takes
    records = json.dumps({"dataframe_records": [{"image": base64.b64encode(blobs[0]).decode()}]}).encode()
    assert json.loads(post(url, records)[1])["predictions"][0]["verdict"] == expected[0]["verdict"]
    refusals = {
        "too large": (post(url, os.urandom(50000), "image/png"), 413, b"over the limit of 40000"),
        "too many": (post(url, images_body(blobs[:1] * 5)), 400, b"at most 4 are scored per request"),
        "masks": (post(url, images_body(blobs[:1], params={"masks": True})), 400, b"masks need a GAMMA model"),
        "unknown param": (post(url, images_body(blobs[:1], params={"thresh": 0.3})), 400, b"unknown params"),
        "content type": (post(url, b"x", "text/plain"), 415, b"Content-Type text/plain"),
        "url": (post(url, json.dumps({"inputs": {"image": ["http://127.0.0.1:1/x.png"]}}).encode()), 200,
                b"urls_not_allowed"),
    }
    for what, ((status, body), want_status, needle) in refusals.items():
        assert status == want_status and needle in body, (what, status, body[:300])


def test_it_keeps_answering_under_a_bounded_load(served, tiny_images):
    url, _ = served
    blobs = [p.read_bytes() for p in tiny_images]

    def client(i: int) -> list[int]:
        return [post(url, images_body([blobs[(i + k) % 6], blobs[(i + 2 * k) % 6]]))[0] for k in range(4)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, range(8)))  # 8 concurrent clients, 32 requests, 64 images
        assert urllib.request.urlopen(url.rstrip("/") + "/-/healthz", timeout=30).status == 200  # meanwhile
    assert [s for r in results for s in r] == [200] * 32


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_every_socket_of_the_server_listens_on_loopback_only(served):
    _, proc = served
    ours = {int(p) for p in subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()}
    listening = [line.split()[3] for line in subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True,
                                                            check=True).stdout.splitlines()
                 if {int(p) for p in re.findall(r"pid=(\d+)", line)} & ours]
    assert len(listening) >= 3, listening  # the proxy, Ray's GCS and raylet at least
    assert [a for a in listening if not a.rsplit(":", 1)[0].strip("[]").endswith("127.0.0.1")] == []
