"""Where flows run: the Prefect API they report to and the Dask cluster they fan out on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from prefect_dask import DaskTaskRunner


@contextlib.contextmanager
def prefect_api() -> Iterator[str | None]:
    """Make sure one Prefect API serves the flow *and* its Dask workers.

    With `PREFECT_API_URL` set (a `prefect server start` or Prefect Cloud), that API is
    used. Without it, one temporary local server is started here and its URL exported,
    so worker processes report to it instead of each starting a server of their own.
    """
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # The same instance Prefect would start on its own; Prefect stops it at exit, after
    # its log and event workers have flushed (stopping it here would lose those).
    # Hospitals are often offline: no usage telemetry from a temporary server.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def dask_task_runner(
    workers: int | None = None,
    address: str | None = None,
    memory_limit: str | None = None,
) -> DaskTaskRunner:
    """A task runner on an existing scheduler (`address`) or a new LocalCluster.

    The local cluster has one single-threaded worker process per core by default:
    DICOM decoding holds the GIL, so processes, not threads, give parallelism.
    """
    if address:
        return DaskTaskRunner(address=address)
    n_workers = workers or os.cpu_count() or 1
    kwargs: dict[str, Any] = {
        "n_workers": n_workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
        # Workers import renalflow (and Prefect) while the cluster starts, not on their
        # first task.
        "preload": ["flows.ingest"],
    }
    if memory_limit:
        kwargs["memory_limit"] = memory_limit
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)
