"""Starting and stopping the real servers tests use (MLflow, moto, Ray): ports, readiness, teardown."""

from __future__ import annotations

import os
from contextlib import contextmanager


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, timeout: float = 120.0) -> None:
    """Poll ``url`` until it answers 200; fail with the process's log if it exits or times out."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def stop_process(proc) -> None:
    """Terminate a process started with ``start_new_session=True`` and its workers (its group)."""
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)  # uvicorn waits for idle keep-alive clients
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def mlflow_server_at(root, artifacts: str):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite under ``root``, proxied artifacts stored at
    ``artifacts``: a folder or an s3:// URL); yields its URI and stops it afterwards."""
    import subprocess
    import sys

    port = free_port()
    log = open(os.path.join(str(root), "server.log"), "wb")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{os.path.join(str(root), 'mlflow.db')}",
           "--artifacts-destination", artifacts, "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        log.close()
