"""Where flows run: the Prefect API they report to and the Dask cluster they fan out on."""

from __future__ import annotations

import contextlib
import logging
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


S3_CREDENTIALS_BLOCK_ENV = "RENALFLOW_S3_CREDENTIALS_BLOCK"

# Keys of the Secret block's JSON value, and the variables s3fs and deltalake read.
_S3_KEYS = {
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
    "endpoint_url": "AWS_ENDPOINT_URL",
    "region": "AWS_DEFAULT_REGION",
}


def load_s3_credentials() -> list[str]:
    """Object-storage credentials from a Prefect Secret block, into this process.

    When RENALFLOW_S3_CREDENTIALS_BLOCK names a Secret block whose value is a JSON
    object (aws_access_key_id, aws_secret_access_key, optional aws_session_token,
    endpoint_url, region), its values are set as the AWS_* variables s3fs and
    deltalake read. Returns the names of the variables set (never their values).
    Called before a flow starts its cluster, so local workers inherit them; workers
    elsewhere load the block themselves when they preload `renalflow.flows.ingest`.
    """
    name = os.environ.get(S3_CREDENTIALS_BLOCK_ENV)
    if not name:
        return []
    from prefect.blocks.system import Secret

    from renalflow.tasks.errors import InputError

    try:
        block: Any = Secret.load(name)
    except ValueError as err:
        raise InputError(
            f"{S3_CREDENTIALS_BLOCK_ENV} names the Secret block {name!r}, which does not "
            "exist on the Prefect server; create it with Secret(value={'aws_access_key_id': "
            f"..., 'aws_secret_access_key': ...}}).save({name!r})"
        ) from err
    value = block.get()
    if not isinstance(value, dict):
        raise InputError(
            f"the Secret block {name!r} must hold a JSON object with aws_access_key_id and "
            "aws_secret_access_key (and optionally aws_session_token, endpoint_url, region)"
        )
    set_names = []
    for key, variable in _S3_KEYS.items():
        if value.get(key):
            os.environ[variable] = str(value[key])
            set_names.append(variable)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return set_names


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
        # A free loopback port: never a clash with another cluster, never on the network.
        "dashboard_address": "127.0.0.1:0",
        # Workers import renalflow (and Prefect) while the cluster starts, not on their
        # first task.
        "preload": ["renalflow.flows.ingest"],
    }
    if memory_limit:
        kwargs["memory_limit"] = memory_limit
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


class _UserMistakes(logging.Filter):
    """Drop log records that carry a RenalflowError: the CLI reports those itself, in
    one line; Prefect's "Encountered exception" traceback would only bury it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from renalflow.tasks.errors import RenalflowError

        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, RenalflowError)


def configure_logging(verbose: bool) -> None:
    """Quiet by default: warnings and errors from Prefect and Dask on the console, and
    no traceback for a user's mistake. `verbose` shows their INFO logs. Logs shipped to
    the Prefect API (the UI) keep every level either way.

    Set for this process and, through the environment, for the worker processes it starts.
    """
    level = "INFO" if verbose else "WARNING"
    # Children (Dask workers, a temporary Prefect server) read these when they start.
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = level
    os.environ["DASK_LOGGING__DISTRIBUTED"] = level.lower()
    import dask

    dask.config.set({"logging.distributed": level.lower()})
    logging.getLogger("distributed").setLevel(level)
    root = logging.getLogger()
    for handler in root.handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.setLevel(level)
            if not verbose and not any(isinstance(f, _UserMistakes) for f in handler.filters):
                handler.addFilter(_UserMistakes())
