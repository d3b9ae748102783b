"""Every test here runs a Ray job (a local Ray, a `ray start` cluster or `ray job submit`): they are
the slow lane (`pytest -m "not slow"` leaves them out; CI runs them)."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/pipelines/" in str(item.fspath):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def ray_cluster(moto_s3):
    """A real multi-node Ray on this machine (head with 0 CPUs + worker nodes w1 and w2 with 2 CPUs
    each, via ``ray start``, token auth, 127.0.0.1), whose every process uses the moto S3 server."""
    from helpers.cluster import start_cluster, wait_accepts_jobs

    cluster = start_cluster(("w1", "w2"), cpus=2, extra_env=moto_s3["env"])
    try:
        wait_accepts_jobs(cluster)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def mlflow_s3_server(moto_s3, tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend) whose artifacts go to the S3 server
    (proxied: clients talk HTTP to MLflow, MLflow talks S3); yields its URI."""
    from helpers.processes import mlflow_server_at

    root = tmp_path_factory.mktemp("mlflow_s3")
    with mlflow_server_at(root, f"s3://{moto_s3['bucket']}/mlflow") as uri:
        yield uri
