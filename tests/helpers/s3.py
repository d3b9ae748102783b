"""A real S3-compatible server for tests: moto's server on 127.0.0.1 (PyPI ``moto[server]``).

s3fs (through botocore's ``AWS_ENDPOINT_URL``), MLflow's artifact store (``MLFLOW_S3_ENDPOINT_URL``)
and every Ray worker (which inherits the test process's environment) reach it the way they would
reach AWS: nothing in gendet knows it is a test.
"""

from __future__ import annotations

import os
import subprocess
import sys

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def start_moto(port: int, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **CREDENTIALS})


def s3_env(endpoint: str) -> dict[str, str]:
    """What a process needs to use the test server as its S3."""
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint,
            "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                 if k != "AWS_DEFAULT_REGION"},
                 region_name=CREDENTIALS["AWS_DEFAULT_REGION"]).create_bucket(Bucket=bucket)
