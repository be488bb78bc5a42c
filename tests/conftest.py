"""Shared fixtures: a real Prefect API and a real Dask cluster, both on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Import Prefect before any test imports TensorFlow.

    Prefect configures logging when it is first imported, and that closes every handler
    configured before it. absl's handler (TensorFlow's) closes its stream when closed,
    and under pytest that stream is the capture buffer: a later test that imported
    Prefect for the first time then broke output capture for the rest of the run.
    """
    import prefect.main  # noqa: F401  (its import configures logging)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Iterator[str]:
    """A temporary Prefect server (its own SQLite database) shared by the whole session.

    The URL is exported so Dask worker processes and CLI subprocesses report to the
    same API instead of starting servers of their own.
    """
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="module")
def dask_cluster(prefect_api: str) -> Iterator[object]:
    """A real two-worker LocalCluster (processes, one thread each), as on a 2-core machine."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def s3(prefect_api: str) -> Iterator[object]:
    """moto's S3 server on 127.0.0.1, in a process of its own, and an s3fs client.

    Its own process, not a thread of this one: deltalake holds the GIL while it waits
    for some replies, which would stall a server thread in the same interpreter.
    The endpoint and credentials are exported, so s3fs, deltalake, Dask workers and
    CLI subprocesses all find it.
    """
    from tests.factory import start_moto

    server, url = start_moto()
    settings = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "renalflow-test",
        "AWS_SECRET_ACCESS_KEY": "renalflow-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    previous = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()  # start_moto waited until the server answers
    try:
        yield fs
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3fs.S3FileSystem.clear_instance_cache()
        server.terminate()
        server.wait(30)
