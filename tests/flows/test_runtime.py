"""The runtime: renalflow's local Prefect server, the console's quiet default, the links
a summary prints."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from renalflow.flows import runtime
from renalflow.flows.cli import main
from renalflow.tasks.errors import InputError

FAILING_FLOW = """
import sys
from prefect import flow
from renalflow.flows.runtime import configure_logging, prefect_api
from renalflow.tasks.errors import InputError

configure_logging(verbose=sys.argv[1] == "-v")

@flow
def refuses():
    raise InputError("labels.csv line 3: label 'maybe' is not benign or malignant")

with prefect_api():
    try:
        refuses()
    except InputError as err:
        print(f"renalflow: error: {err}", file=sys.stderr)
"""

USE_API = """
import os, sys
from renalflow.flows.runtime import prefect_api
with prefect_api() as url:
    print(url, os.environ["PREFECT_API_URL"] == url, flush=True)
"""


def _without_api(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.pop(runtime.SERVER_IDLE_ENV, None)
    return {**env, runtime.HOME_ENV: str(tmp_path / "home"), **extra}


def test_a_user_mistake_inside_a_flow_prints_no_prefect_traceback(prefect_api, tmp_path):
    quiet = subprocess.run(
        [sys.executable, "-c", FAILING_FLOW, "-q"], capture_output=True, text=True, cwd=tmp_path
    )
    assert "Traceback" not in quiet.stderr, quiet.stderr
    assert "Encountered exception" not in quiet.stderr
    assert quiet.stderr.strip().splitlines() == [
        "renalflow: error: labels.csv line 3: label 'maybe' is not benign or malignant"
    ]
    verbose = subprocess.run(
        [sys.executable, "-c", FAILING_FLOW, "-v"], capture_output=True, text=True, cwd=tmp_path
    )
    assert "Encountered exception" in verbose.stderr and "Traceback" in verbose.stderr
    assert "Beginning flow run" in verbose.stderr


def test_quiet_console_filters_user_mistakes_and_info(monkeypatch):
    for name in (runtime.VERBOSE_ENV, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", os.environ.get("DASK_LOGGING__DISTRIBUTED", ""))
    console = [
        h for h in logging.getLogger().handlers if type(h).__name__ == "PrefectConsoleHandler"
    ]
    assert console, "conftest imports Prefect, which adds its console handler"
    try:
        runtime.configure_logging(verbose=False)
        handler = console[0]
        assert handler.level == logging.WARNING
        assert logging.getLogger("distributed").level == logging.WARNING
        try:
            raise InputError("bad labels file")
        except InputError:
            mistake = logging.LogRecord(
                "prefect.flow_runs", logging.ERROR, __file__, 1, "boom", None, sys.exc_info()
            )
        try:
            raise ValueError("a bug")
        except ValueError:
            bug = logging.LogRecord(
                "prefect.flow_runs", logging.ERROR, __file__, 1, "boom", None, sys.exc_info()
            )
        assert not handler.filter(mistake)
        assert handler.filter(bug)  # a bug keeps its traceback
        runtime.configure_logging(verbose=True)
        assert handler.level == logging.INFO and handler.filter(mistake)
        assert logging.getLogger("distributed").level == logging.INFO
    finally:
        runtime.configure_logging(verbose=False)


def test_tensorflow_start_up_lines_follow_verbosity_unless_the_user_chose(monkeypatch):
    for name in (runtime.VERBOSE_ENV, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", os.environ.get("DASK_LOGGING__DISTRIBUTED", ""))
    try:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
        runtime.configure_logging(verbose=False)
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
        runtime.configure_logging(verbose=True)
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
        runtime.configure_logging(verbose=False)
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    finally:
        runtime.configure_logging(verbose=False)


def test_local_clusters_bind_loopback_preload_renalflow_and_follow_verbosity(monkeypatch):
    monkeypatch.setenv(runtime.VERBOSE_ENV, "0")
    kwargs = runtime.dask_task_runner(workers=3, memory_limit="2GiB").cluster_kwargs
    assert kwargs["n_workers"] == 3 and kwargs["threads_per_worker"] == 1
    assert kwargs["dashboard_address"] == "127.0.0.1:0"
    assert kwargs["memory_limit"] == "2GiB"
    assert kwargs["preload"] == ["renalflow.flows.ingest", "renalflow.flows.runtime"]
    assert kwargs["silence_logs"] == logging.WARNING
    monkeypatch.setenv(runtime.VERBOSE_ENV, "1")
    assert runtime.dask_task_runner(workers=1).cluster_kwargs["silence_logs"] == logging.INFO
    assert runtime.dask_task_runner(address="tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"


def test_flow_run_url_is_the_ui_page_prefect_links_to(prefect_api):
    from prefect import flow

    @flow
    def where() -> tuple[str | None, str]:
        from prefect.runtime import flow_run

        return runtime.flow_run_url(), str(flow_run.id)

    url, run_id = where()
    assert url == f"{prefect_api.removesuffix('/api')}/runs/flow-run/{run_id}"
    assert runtime.flow_run_url() is None  # outside a run


def test_dask_dashboard_is_none_without_bokeh_or_cluster(dask_cluster):
    import importlib.util

    from distributed import Client

    assert runtime.dask_dashboard() is None  # no flow, no runner
    with Client(dask_cluster) as client:  # type: ignore[arg-type]
        link = runtime.dask_dashboard(client)
    if importlib.util.find_spec("bokeh") is None:
        assert link is None
    else:
        assert link and link.startswith("http://127.0.0.1:")


def test_home_and_idle_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.HOME_ENV, str(tmp_path / "rf"))
    assert runtime.renalflow_home() == tmp_path / "rf"
    monkeypatch.delenv(runtime.HOME_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert runtime.renalflow_home() == tmp_path / "cache" / "renalflow"
    monkeypatch.delenv(runtime.SERVER_IDLE_ENV, raising=False)
    assert runtime.server_idle_seconds() == runtime.DEFAULT_SERVER_IDLE_S
    monkeypatch.setenv(runtime.SERVER_IDLE_ENV, "0")
    assert runtime.server_idle_seconds() == 0
    monkeypatch.setenv(runtime.SERVER_IDLE_ENV, "ten minutes")
    with pytest.raises(InputError, match="RENALFLOW_SERVER_IDLE='ten minutes' is not a number"):
        runtime.server_idle_seconds()


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not runtime._pid_alive(pid):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_local_server_is_reused_then_stops_when_idle(tmp_path, monkeypatch):
    env = _without_api(tmp_path, **{runtime.SERVER_IDLE_ENV: "3"})
    first = subprocess.run([sys.executable, "-c", USE_API], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "starting a local Prefect server" in first.stderr
    url, exported = first.stdout.split()
    assert exported == "True" and url.startswith("http://127.0.0.1:")
    state_file = tmp_path / "home" / "server" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["url"] == url and runtime._pid_alive(state["pid"])
    assert (tmp_path / "home" / "prefect" / "prefect.db").exists()  # not in ~/.prefect

    started = time.perf_counter()
    second = subprocess.run(
        [sys.executable, "-c", USE_API], env=env, capture_output=True, text=True
    )
    assert second.returncode == 0 and second.stdout.split()[0] == url
    assert "starting" not in second.stderr
    assert time.perf_counter() - started < 15  # an import of Prefect, not a server start

    assert _wait_gone(state["pid"], 30), "the idle server did not stop"
    assert _servers_of(tmp_path / "home") == []
    assert not state_file.exists()
    assert not list((tmp_path / "home" / "server" / "leases").iterdir())


@pytest.mark.slow
def test_stop_api_server_and_a_server_per_command(tmp_path, monkeypatch, capsys):
    env = _without_api(tmp_path)
    warm = subprocess.run([sys.executable, "-c", USE_API], env=env, capture_output=True, text=True)
    assert warm.returncode == 0, warm.stderr
    monkeypatch.setenv(runtime.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    status = runtime.api_server_status()
    assert status and status["url"] == warm.stdout.split()[0]
    assert main(["server"]) == 0  # `renalflow server status` tells where and how long
    told = capsys.readouterr().out
    assert status["url"] in told and str(status["pid"]) in told and "stops after" in told
    assert main(["server", "stop"]) == 0
    assert capsys.readouterr().out.strip() == "stopped the local Prefect server"
    assert not runtime._pid_alive(status["pid"]) and runtime.api_server_status() is None
    assert not runtime.stop_api_server()
    assert main(["server"]) == 0
    assert "no local Prefect server runs" in capsys.readouterr().out

    # RENALFLOW_SERVER_IDLE=0: the command's own server, gone when the command is.
    code = USE_API + "print(os.getpid())\n"
    env_once = _without_api(tmp_path, **{runtime.SERVER_IDLE_ENV: "0"})
    once = subprocess.run(
        [sys.executable, "-c", code], env=env_once, capture_output=True, text=True
    )
    assert once.returncode == 0, once.stderr
    port = once.stdout.split()[0].rsplit(":", 1)[1].split("/")[0]
    assert not runtime._healthy(f"http://127.0.0.1:{port}/api", timeout=1)
    assert _servers_of(tmp_path / "home") == [], "a server process was left behind"


def _servers_of(home: Path) -> list[int]:
    """Pids of local server processes whose folder is under `home` (Linux /proc)."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc")
    mark = f"RENALFLOW_SERVER_DIR={home / 'server'}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_missing_extra_is_refused_in_one_line_naming_it(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    absent = {"s3fs", "python_multipart", "jax"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name in absent else real_find_spec(name, *args),
    )
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    runtime.require_extras_for("/data/archive", None, "file:///data/store")  # local: fine
    with pytest.raises(
        InputError, match=r"^s3:// needs the s3 extra: pip install 'renalflow\[s3\]'$"
    ):
        runtime.require_extras_for("/data/archive", "s3://bucket/store")
    with pytest.raises(InputError, match=r"^the upload page needs the web extra: .*\[web\]'$"):
        runtime.require_extra("web", "the upload page")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(InputError, match=r"^KERAS_BACKEND=jax needs the jax extra"):
        runtime.require_extras_for()
    monkeypatch.delenv("KERAS_BACKEND")
    absent.clear()
    runtime.require_extras_for("s3://bucket/store")  # installed: no complaint


def test_s3_credentials_need_no_s3fs_when_none_was_imported(monkeypatch):
    class Block:
        def get(self):
            return {"aws_access_key_id": "AKIA", "aws_secret_access_key": "secret"}

    from prefect.blocks.system import Secret

    monkeypatch.setenv(runtime.S3_CREDENTIALS_BLOCK_ENV, "renalflow-s3")
    monkeypatch.setattr(Secret, "load", classmethod(lambda cls, name: Block()))
    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` would fail
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable, raising=False)
    assert runtime.load_s3_credentials() == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "secret"


LOGGING_WORKERS = """
from prefect import flow, task, get_run_logger
from prefect.runtime import flow_run
from renalflow.flows import runtime

@task
def note(i):
    get_run_logger().info("note %s from a worker", i)
    return i

@flow
def notes():
    assert [f.result() for f in note.map(range(4))] == [0, 1, 2, 3]
    print(flow_run.id, flush=True)

if __name__ == "__main__":
    runtime.configure_logging(verbose=False)
    notes.with_options(task_runner=runtime.dask_task_runner(workers=2))()
"""


@pytest.mark.slow
def test_local_workers_end_at_once_after_their_logs_reached_the_api(prefect_api, tmp_path):
    script = tmp_path / "notes.py"
    script.write_text(LOGGING_WORKERS)
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    # Quiet mode: nothing on the console, not even the nanny's "still alive ... killing".
    assert "still alive" not in run.stderr and "Traceback" not in run.stderr, run.stderr
    run_id = run.stdout.split()[0]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    notes = sorted(log.message for log in logs if "from a worker" in log.message)
    assert notes == [f"note {i} from a worker" for i in range(4)]


EXITING_WORKER = """
import atexit, multiprocessing, sys
from pathlib import Path
from renalflow.flows import runtime

def mark(name):
    atexit.register(lambda: Path(sys.argv[1], name).write_text("ran"))

def worker_process(closed_cleanly):
    mark("registered-before-setup")  # e.g. the interpreter's own clean-up
    runtime.dask_setup(None)
    mark("registered-after-setup")  # e.g. Prefect's exit hooks, which flush logs
    if closed_cleanly:
        runtime.dask_teardown(None)
    sys.exit(3 if not closed_cleanly else 0)

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(
        target=worker_process, args=(sys.argv[2] == "clean",)
    )
    child.start()
    child.join()
    print(child.exitcode)
"""


@pytest.mark.parametrize("how", ["clean", "failing"])
def test_a_cleanly_closed_worker_process_leaves_after_the_exit_hooks_of_prefect(tmp_path, how):
    script = tmp_path / "worker.py"
    script.write_text(EXITING_WORKER)
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path), how], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    ran = {p.name for p in tmp_path.iterdir()} - {"worker.py"}
    if how == "clean":
        # Hooks registered after the preload's (Prefect's) ran; then the process left
        # without the rest of the teardown.
        assert ran == {"registered-after-setup"}
        assert run.stdout.split() == ["0"]
    else:  # a worker that did not close cleanly keeps the full teardown and its code
        assert ran == {"registered-after-setup", "registered-before-setup"}
        assert run.stdout.split() == ["3"]


def test_a_stop_ignored_inside_a_finaliser_is_delivered_again_after_the_hook(monkeypatch):
    """A SIGTERM whose handler raised inside a garbage-collection callback is 'ignored'
    by Python: the hook sends it to the main thread again once it has returned, so the
    command still stops (raised inside the hook, it would be lost a second time)."""
    import signal
    import types

    from prefect.exceptions import TerminationSignal

    class Stopped(Exception):
        pass

    def handler(signum, frame):
        raise Stopped(signum)

    seen: list[object] = []
    previous = signal.signal(signal.SIGTERM, handler)
    redelivery = runtime.StopRedelivery()
    try:
        hook = runtime.quiet_when_stopping(seen.append, redelivery)
        ignored = types.SimpleNamespace(exc_value=TerminationSignal(signal=signal.SIGTERM))
        hook(ignored)  # returns: nothing raised inside the hook
        with pytest.raises(Stopped):
            time.sleep(5)  # the stop arrives again here, in the main thread
        assert seen == []  # and nothing was printed
        # A stop still queued when the command ends is dropped, never sent.
        hook(ignored)
        redelivery.close()
        time.sleep(3 * runtime.REDELIVER_DELAY_S)
    finally:
        redelivery.close()
        signal.signal(signal.SIGTERM, previous)
