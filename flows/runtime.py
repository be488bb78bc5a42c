"""Where flows run: the Prefect API they report to, the Dask cluster they fan out on, and
what they print on the console.

The Prefect API, when PREFECT_API_URL names none, is a local server renalflow owns: it
keeps its database under renalflow's folder (`$RENALFLOW_HOME`, else
`$XDG_CACHE_HOME/renalflow`, else `~/.cache/renalflow`), never in `~/.prefect`, and stays
warm between commands so that only the first command of a session pays for its start
(5-8 s on a 2-core machine; later ones attach in milliseconds). It stops on its own after
`RENALFLOW_SERVER_IDLE` seconds without a command (default 600), or at once with
`stop_api_server()`; `RENALFLOW_SERVER_IDLE=0` gives each command a server of its own,
stopped when the command exits.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renalflow.tasks.storage import S3_CREDENTIALS_BLOCK_ENV

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner
    from uvicorn import Server

HOME_ENV = "RENALFLOW_HOME"
SERVER_IDLE_ENV = "RENALFLOW_SERVER_IDLE"
DEFAULT_SERVER_IDLE_S = 600.0
VERBOSE_ENV = "RENALFLOW_VERBOSE"

# A first start migrates a new database (7 s here); a loaded machine may take much longer.
_START_TIMEOUT_S = 180.0
_STOP_TIMEOUT_S = 15.0
_LOG_MAX_BYTES = 1 << 20


def renalflow_home() -> Path:
    """renalflow's own folder for state kept between commands (the local Prefect server)."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "renalflow"


def server_idle_seconds() -> float:
    """How long the local Prefect server waits for the next command (0: one per command)."""
    raw = os.environ.get(SERVER_IDLE_ENV, "")
    if not raw.strip():
        return DEFAULT_SERVER_IDLE_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        from renalflow.tasks.errors import InputError

        raise InputError(
            f"{SERVER_IDLE_ENV}={raw!r} is not a number of seconds; give e.g. 600, or 0 for "
            "a Prefect server per command"
        ) from None


@contextlib.contextmanager
def prefect_api() -> Iterator[str | None]:
    """Make sure one Prefect API serves the flow *and* its Dask workers.

    With `PREFECT_API_URL` set (a `prefect server start` or Prefect Cloud), that API is
    used. Without it, renalflow's local server is used (started when none is warm) and
    its URL exported, so worker processes report to it instead of starting their own.
    """
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Prefect's console handler exists from here on: give it the console's settings.
    ensure_logging_setup()
    _apply_console_settings()
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    idle = server_idle_seconds()
    with _warm_server(idle) if idle > 0 else _command_server() as url:
        os.environ["PREFECT_API_URL"] = url
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def api_server_status() -> dict[str, Any] | None:
    """The warm local Prefect server (url, pid, port, started, idle_s), or None."""
    state = _read_state(_server_dir())
    if state and _pid_alive(state["pid"]) and _healthy(state["url"]):
        return state
    return None


def stop_api_server() -> bool:
    """Stop the warm local Prefect server now; False when none was running.

    A command still using it loses its API, so call this between commands.
    """
    server_dir = _server_dir()
    with _locked(server_dir):
        state = _read_state(server_dir)
        if not state:
            return False
        (server_dir / "state.json").unlink(missing_ok=True)
        if not _pid_alive(state["pid"]):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(state["pid"], signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while _pid_alive(state["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(state["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state["pid"], signal.SIGKILL)
        return True


# --- the local server, client side ---------------------------------------------------


def _server_dir() -> Path:
    return renalflow_home() / "server"


@contextlib.contextmanager
def _locked(server_dir: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on the server folder (yields False when not blocking and busy)."""
    server_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, last writer wins
        yield True
        return
    with open(server_dir / "lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state(server_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((server_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and {"pid", "port", "url"} <= set(state) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: an exited process nobody has reaped yet is a zombie, not alive
        return Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    # Loopback only: no proxy from the environment may answer for it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{api_url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _identity() -> dict[str, str]:
    """What a reused server must match: this Python and this Prefect."""
    return {"python": sys.executable, "prefect": importlib.metadata.version("prefect")}


def _lease(server_dir: Path, port: int) -> Path:
    """A file saying this process uses the server on `port` (the server waits for it)."""
    leases = server_dir / "leases"
    leases.mkdir(parents=True, exist_ok=True)
    lease = leases / f"{port}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    lease.touch()
    return lease


@contextlib.contextmanager
def _warm_server(idle: float) -> Iterator[str]:
    """The shared local server: reused when one is warm, else started and left warm."""
    server_dir = _server_dir()
    with _locked(server_dir):
        state = _read_state(server_dir)
        usable = (
            state is not None
            and {k: state.get(k) for k in ("python", "prefect")} == _identity()
            and _pid_alive(state["pid"])
            and _healthy(state["url"])
        )
        if not usable:
            # Not a log record: it shows in quiet mode, where the wait would be unexplained.
            sys.stderr.write(
                f"renalflow: starting a local Prefect server for this and later commands "
                f"(it stops after {idle / 60:g} min unused)\n"
            )
            process, port = _launch(server_dir, idle)
            state = {
                "pid": process.pid,
                "port": port,
                "url": f"http://127.0.0.1:{port}/api",
                "started": time.time(),
                "idle_s": idle,
                **_identity(),
            }
            (server_dir / "state.json").write_text(json.dumps(state, indent=2))
        assert state is not None
        lease = _lease(server_dir, int(state["port"]))
    try:
        yield str(state["url"])
    finally:
        lease.unlink(missing_ok=True)


_COMMAND_SERVER: dict[str, str] = {}


@contextlib.contextmanager
def _command_server() -> Iterator[str]:
    """A server for this command alone, stopped when the process exits: after Prefect's
    own exit handlers (registered later, so run earlier) have sent the last logs."""
    if "url" not in _COMMAND_SERVER:
        server_dir = _server_dir()
        server_dir.mkdir(parents=True, exist_ok=True)  # a first command may be this one
        process, port = _launch(server_dir, idle=0.0, owner=os.getpid())
        atexit.register(_stop_child, process)
        _COMMAND_SERVER["url"] = f"http://127.0.0.1:{port}/api"
    yield _COMMAND_SERVER["url"]


def _stop_child(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _launch(
    server_dir: Path, idle: float, owner: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `_serve` in a new session (a Ctrl-C in the terminal is the command's, not the
    server's) and wait until it answers. A server with an `owner` process stops with it;
    one without stops after `idle` seconds with no command holding a lease on it."""
    home = renalflow_home()
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    log_path = server_dir / "server.log"
    if log_path.exists() and log_path.stat().st_size > _LOG_MAX_BYTES:
        log_path.unlink()
    last_error = ""
    for _ in range(3):
        port = _free_port()
        env = {
            key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API_URL")
        }
        env.update(
            {
                # The server's database, block registry memo and UI files: renalflow's.
                "PREFECT_HOME": str(home / "prefect"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
                "RENALFLOW_SERVER_PORT": str(port),
                "RENALFLOW_SERVER_IDLE_S": str(idle),
                "RENALFLOW_SERVER_DIR": str(server_dir),
                "RENALFLOW_SERVER_OWNER": str(owner or ""),
            }
        )
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", "from renalflow.flows.runtime import _serve; _serve()"],
                env=env,
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                last_error = f"it exited with code {process.returncode}"
                break
            if _healthy(url, timeout=1.0):
                return process, port
            time.sleep(0.05)
        else:
            process.kill()
            process.wait()
            last_error = f"it did not answer within {_START_TIMEOUT_S:.0f} s"
    tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
    raise RuntimeError(
        f"the local Prefect server did not start ({last_error}); its log is {log_path}. "
        f"Set PREFECT_API_URL to use another server.\n{tail}"
    )


# --- the local server, server side ---------------------------------------------------


def _serve() -> None:
    """The local server's process: Prefect's API and UI under uvicorn, until no command
    has used it for its idle time (or SIGTERM)."""
    port = int(os.environ["RENALFLOW_SERVER_PORT"])
    idle = float(os.environ["RENALFLOW_SERVER_IDLE_S"])
    server_dir = Path(os.environ["RENALFLOW_SERVER_DIR"])
    owner = int(os.environ.get("RENALFLOW_SERVER_OWNER") or 0)
    import uvicorn
    from prefect.server.api.server import create_app

    config = uvicorn.Config(
        create_app(final=True), host="127.0.0.1", port=port, log_level="error", lifespan="on"
    )
    server = uvicorn.Server(config)
    if owner:
        watcher = threading.Thread(target=_watch_owner, args=(server, owner), daemon=True)
    else:
        watcher = threading.Thread(
            target=_watch_leases, args=(server, port, idle, server_dir), daemon=True
        )
    watcher.start()
    server.run()


def _live_leases(server_dir: Path, port: int) -> bool:
    live = False
    for lease in (server_dir / "leases").glob(f"{port}.*"):
        try:
            pid = int(lease.name.split(".")[1])
        except (IndexError, ValueError):
            continue
        if _pid_alive(pid):
            live = True
        else:  # a command that died without releasing it
            lease.unlink(missing_ok=True)
    return live


def _watch_owner(server: Server, owner: int) -> None:
    """A command's own server: normally stopped by the command at exit; this is for a
    command that was killed before it could."""
    while not server.should_exit:
        time.sleep(1.0)
        if not _pid_alive(owner):
            server.should_exit = True


def _watch_leases(server: Server, port: int, idle: float, server_dir: Path) -> None:
    last_busy = time.time()
    while not server.should_exit:
        time.sleep(1.0)
        if _live_leases(server_dir, port):
            last_busy = time.time()
            continue
        with contextlib.suppress(OSError):  # a lease came and went between two looks
            last_busy = max(last_busy, (server_dir / "leases").stat().st_mtime)
        if time.time() - last_busy < idle:
            continue
        with _locked(server_dir, blocking=False) as held:
            # Holding the lock, no command can be attaching to this server right now.
            if not held or _live_leases(server_dir, port):
                continue
            state = _read_state(server_dir)
            if state and int(state["port"]) == port:
                (server_dir / "state.json").unlink(missing_ok=True)
            server.should_exit = True


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
    s3fs = sys.modules.get("s3fs")
    if s3fs is not None:  # filesystems made before these credentials must not be reused
        s3fs.S3FileSystem.clear_instance_cache()
    return set_names


# --- optional features ---------------------------------------------------------------

# The modules each extra in pyproject.toml installs: what require_extra looks for.
EXTRAS: dict[str, tuple[str, ...]] = {
    "s3": ("s3fs",),
    "web": ("fastapi", "python_multipart"),
    "hpc": ("dask_jobqueue",),
    "kubernetes": ("dask_kubernetes",),
    "jax": ("jax",),
    "pacs": ("dicomweb_client", "pynetdicom"),
}


def require_extra(extra: str, what: str) -> None:
    """Refuse in one line when `extra` is not installed, e.g. "s3:// needs the s3 extra:
    pip install 'renalflow[s3]'" (an InputError: the CLI prints it, exit code 2)."""
    from renalflow.tasks.errors import InputError

    if any(importlib.util.find_spec(module) is None for module in EXTRAS[extra]):
        raise InputError(f"{what} needs the {extra} extra: pip install 'renalflow[{extra}]'")


def require_extras_for(*locations: str | None) -> None:
    """Check, before any work starts, that the extras a command's locations and this
    process's settings need are installed: s3:// URIs need `s3`, KERAS_BACKEND=jax
    needs `jax`. Local paths and None are fine."""
    for location in locations:
        if location and location.split("://", 1)[0].lower() in ("s3", "s3a"):
            require_extra("s3", "s3://")
            break
    if os.environ.get("KERAS_BACKEND", "").strip().lower() == "jax":
        require_extra("jax", "KERAS_BACKEND=jax")


def dask_task_runner(
    workers: int | None = None,
    address: str | None = None,
    memory_limit: str | None = None,
) -> DaskTaskRunner:
    """A task runner on an existing scheduler (`address`) or a new LocalCluster.

    The local cluster has one single-threaded worker process per core by default:
    DICOM decoding holds the GIL, so processes, not threads, give parallelism.
    """
    from prefect_dask import DaskTaskRunner

    from renalflow.flows.fanout import no_workers_grace_s

    no_workers_grace_s()  # a bad setting is refused before any work, not mid-run

    if address:
        return DaskTaskRunner(address=address)
    n_workers = workers or os.cpu_count() or 1
    kwargs: dict[str, Any] = {
        "n_workers": n_workers,
        "threads_per_worker": 1,
        "processes": True,
        # The scheduler's HTTP server (the dashboard, when bokeh is installed) on a free
        # loopback port: never a clash with another cluster, never on the network.
        "dashboard_address": "127.0.0.1:0",
        # Dask's INFO logs with -v only (LocalCluster sets this for scheduler and workers).
        "silence_logs": logging.INFO if _verbose() else logging.WARNING,
        # Workers import renalflow (and Prefect) while the cluster starts, not on their
        # first task; this module then gives their console the CLI's settings.
        "preload": ["renalflow.flows.ingest", "renalflow.flows.runtime"],
    }
    if memory_limit:
        kwargs["memory_limit"] = memory_limit
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


def dask_setup(worker: Any) -> None:
    """Dask preload hook: a local worker's console follows the CLI's -v (quiet by default),
    and its process ends at once after the worker has closed (see `_exit_at_once`)."""
    import multiprocessing

    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    _apply_console_settings()
    if multiprocessing.parent_process() is not None:  # a worker process, not the CLI's
        # Registered before Prefect's own exit hooks, so it runs after them.
        atexit.register(_exit_at_once)


def dask_teardown(worker: Any) -> None:
    """Dask preload hook: the worker closed cleanly, so its process may skip teardown."""
    _CLOSED_CLEANLY.append(True)


_CLOSED_CLEANLY: list[bool] = []


def _exit_at_once() -> None:
    """The last exit hook of a local worker process that closed cleanly: Prefect has sent
    its logs and events (its exit hooks ran first), so leave without the interpreter's
    teardown. Tearing down Prefect, pandas and pyarrow takes 1-4 s on a busy 2-core
    machine; the nanny waits for it, the command with it, and past 4 s the nanny kills
    the worker with a warning on the console ("Worker process still alive after 4.0
    seconds, killing")."""
    if not _CLOSED_CLEANLY:
        return  # a failing worker keeps its exit code and its normal teardown
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def flow_run_url(flow_run_id: Any = None) -> str | None:
    """The Prefect UI page of a flow run (the running one by default); None outside a run
    or when no UI address is known."""
    from prefect.runtime import flow_run
    from prefect.utilities.urls import url_for

    run_id = flow_run_id or flow_run.id
    if not run_id:
        return None
    return url_for("flow-run", obj_id=str(run_id))


def dask_dashboard(cluster: Any = None) -> str | None:
    """The Dask dashboard address of `cluster` (a DaskTaskRunner, a distributed Client or
    a cluster; by default the running flow's task runner); None when it serves none
    (bokeh not installed, or a scheduler started without one)."""
    if cluster is None:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        cluster = context.task_runner if context else None
    if cluster is None or type(cluster).__name__ == "ThreadPoolTaskRunner":
        return None
    try:
        client = getattr(cluster, "client", cluster)
        # A cluster started here serves its dashboard only with bokeh installed (its
        # HTTP server runs either way); a remote scheduler's dashboard is its own affair.
        if getattr(client, "cluster", None) is not None and not importlib.util.find_spec("bokeh"):
            return None
        link = client.dashboard_link
    except (AttributeError, KeyError, RuntimeError, OSError):
        return None
    return str(link) if link else None


# --- the console ---------------------------------------------------------------------

# Prefect's background senders warn while they flush at exit ("Still processing items").
_EXIT_CHATTER = ("EventsWorker", "APILogWorker")


def _verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


_STOP_SIGNALS: list[StopSignals] = []


class StopSignals:
    """Which stop signals this process received, whoever handled them.

    During a flow run Prefect swaps in its own SIGTERM handler, and the exception a
    handler raises can surface wrapped in another (a signal that lands while Prefect
    serialises a task's context comes out as a serialisation error). The wakeup fd is
    written by the interpreter for every handled signal, so it tells the truth."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(write, False)
        self._write = write
        self._previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        _STOP_SIGNALS.append(self)

    def received(self) -> set[int]:
        """The signal numbers received so far."""
        try:
            while data := os.read(self._read, 512):
                self.seen.update(data)
        except BlockingIOError:
            pass
        return self.seen

    def close(self) -> None:
        _STOP_SIGNALS.remove(self)
        signal.set_wakeup_fd(self._previous)
        os.close(self._read)
        os.close(self._write)


def quiet_when_stopping(hook: Any, redelivery: StopRedelivery | None) -> Any:
    """An unraisable-exception hook for stops. A signal handler's exception raised inside
    a garbage-collection callback or a finaliser is 'ignored' by Python (it prints a
    traceback and carries on, so the stop would be lost): `redelivery` sends the stop to
    the main thread again once the hook has returned, and nothing is printed."""

    def hook_for_stops(unraisable: Any) -> None:
        from prefect.exceptions import TerminationSignal

        error = unraisable.exc_value
        if isinstance(error, TerminationSignal | KeyboardInterrupt):
            terminated = isinstance(error, TerminationSignal) or (
                type(error).__name__ == "Terminated"
            )
            if redelivery is not None:
                redelivery.put(signal.SIGTERM if terminated else signal.SIGINT)
        elif not stopping():
            hook(unraisable)

    return hook_for_stops


REDELIVER_DELAY_S = 0.05
"""How long after an ignored stop it is sent to the main thread again (our choice)."""


class StopRedelivery:
    """Sends a stop that a finaliser swallowed to the main thread again, from a thread
    of its own, after the hook that caught it has returned. Delivered in the hook, its
    handler's exception would be ignored again (`_thread.interrupt_main` runs the
    handler right there when called from the main thread). A real signal also wakes a
    main thread blocked waiting. The hook only queues (safe inside a finaliser); a stop
    still queued when the command ends is dropped, never sent to a default handler."""

    def __init__(self) -> None:
        self._main = threading.main_thread().ident
        self._stops: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name="renalflow-stop-redelivery", daemon=True
        )
        self._thread.start()

    def put(self, signum: int) -> None:
        self._stops.put(signum)

    def _run(self) -> None:
        while (signum := self._stops.get()) is not None:
            time.sleep(REDELIVER_DELAY_S)
            if self._closed or self._main is None:
                continue
            if callable(signal.getsignal(signum)):  # a Python handler: ours or Prefect's
                signal.pthread_kill(self._main, signum)

    def close(self) -> None:
        """Stop sending (before the command restores its signal handlers)."""
        self._closed = True
        self._stops.put(None)
        self._thread.join(timeout=1.0)


def stopping() -> bool:
    """Whether this process has received SIGINT or SIGTERM (while a CLI command runs)."""
    return any({signal.SIGINT, signal.SIGTERM} & watcher.received() for watcher in _STOP_SIGNALS)


class _UserMistakes(logging.Filter):
    """Drop log records that carry a RenalflowError: the CLI reports those itself, in
    one line; Prefect's "Encountered exception" traceback would only bury it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.exceptions import TerminationSignal

        from renalflow.tasks.errors import RenalflowError

        error = record.exc_info[1] if record.exc_info else None
        if error is not None and stopping():
            return False  # fallout of Ctrl-C or SIGTERM, which the CLI reports in one line
        return not isinstance(error, RenalflowError | TerminationSignal | KeyboardInterrupt)


def _console_handlers() -> list[logging.Handler]:
    """Handlers that write to the terminal: Prefect's console handler wherever it is
    attached, and the stream handler distributed adds when it is set up first."""
    found: list[logging.Handler] = []
    for name in ("", "distributed", "uvicorn", "fastapi"):
        for handler in logging.getLogger(name).handlers:
            is_console = type(handler).__name__ == "PrefectConsoleHandler"
            if is_console or (name == "distributed" and isinstance(handler, logging.StreamHandler)):
                found.append(handler)
    return found


def _apply_console_settings() -> None:
    """The console settings configure_logging chose, applied to the handlers and loggers
    that exist now in this process (Prefect creates its handler on first import)."""
    verbose = _verbose()
    level = logging.INFO if verbose else logging.WARNING
    logging.getLogger("distributed").setLevel(level)
    for name in _EXIT_CHATTER:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
    for handler in _console_handlers():
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.setLevel(level)
        mistakes = [f for f in handler.filters if isinstance(f, _UserMistakes)]
        if verbose:
            for found in mistakes:
                handler.removeFilter(found)
        elif not mistakes:
            handler.addFilter(_UserMistakes())


def configure_logging(verbose: bool) -> None:
    """Quiet by default: warnings and errors from Prefect and Dask on the console, and
    no traceback for a user's mistake (a RenalflowError, which the CLI prints in one
    line). `verbose` shows their INFO logs and every traceback. Logs shipped to the
    Prefect API (the UI) keep every level either way.

    Set for this process now and when Prefect sets up its logging (`prefect_api`), and,
    through the environment, for the worker processes it starts (`dask_setup`).
    """
    level = "INFO" if verbose else "WARNING"
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    # Read by Prefect when it sets up logging (first import), here and in children.
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = level
    os.environ["DASK_LOGGING__DISTRIBUTED"] = level.lower()
    # TensorFlow's C++ start-up lines (oneDNN, CPU features, absl): read when TensorFlow
    # loads, here and in the workers. A value the user set is kept.
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import dask

    dask.config.set({"logging.distributed": level.lower()})
    _apply_console_settings()
