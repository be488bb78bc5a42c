"""How a command stops: on SIGTERM mid-flow, and when its Dask cluster has no workers.
Real processes throughout: the CLI, a local cluster, a Prefect server of its own, and
an external Dask scheduler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from renalflow.tasks.synth import SynthConfig, synthesize_archive
from tests.factory import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stopping")
    synthesize_archive(
        root, SynthConfig(patients=8, seed=3, max_slices_per_series=30, lesion_only=True), jobs=1
    )
    return root / "archive"


def _session_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _without_api(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"RENALFLOW_HOME": str(tmp_path / "home"), **extra})
    return env


@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [(signal.SIGTERM, 143, "stopped (SIGTERM)"), (signal.SIGINT, 130, "interrupted")],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_stop_mid_flow_stops_the_flow_cluster_and_server_and_leaves_nothing(
    archive, tmp_path, signum, code, said
):
    # A Prefect server of the command's own (RENALFLOW_SERVER_IDLE=0), which must go too.
    env = _without_api(tmp_path, RENALFLOW_SERVER_IDLE="0")
    command = [sys.executable, "-m", "renalflow.flows.cli", "ingest", str(archive)]
    command += ["--store", str(tmp_path / "store"), "--workers", "2", "--slices-per-task", "2"]
    proc = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the flow has started once it names its dashboard
        seen.append(line)
        if "Dask dashboard" in line:
            break
    else:
        pytest.fail("the flow never started: " + "".join(seen))
    time.sleep(1.0)  # mid-flow: conversion batches are running on both workers
    sent = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == f"renalflow ingest: {said}", err
    assert "Traceback" not in err
    deadline = time.monotonic() + 20
    while _session_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftover = subprocess.run(
        ["ps", "-o", "pid,args", "-g", str(proc.pid)], capture_output=True, text=True
    ).stdout
    assert not _session_alive(proc.pid), f"left behind:\n{leftover}"
    print(f"{signal.Signals(signum).name} to exit: {took:.1f} s")


def test_a_cluster_without_workers_fails_the_flow_in_one_line(archive, tmp_path, prefect_api):
    port = free_port()
    scheduler = subprocess.Popen(
        [str(Path(sys.executable).parent / "dask"), "scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        command = [sys.executable, "-m", "renalflow.flows.cli", "ingest", str(archive)]
        command += ["--store", str(tmp_path / "store"), "--dask-address"]
        command += [f"tcp://127.0.0.1:{port}"]
        # The grace comes from the Dask configuration (default 60 s): 5 s here.
        env = {**os.environ, "DASK_RENALFLOW__NO_WORKERS_GRACE": "5"}
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
        took = time.monotonic() - started
    finally:
        scheduler.terminate()
        scheduler.wait(30)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("renalflow ingest: error: the Dask cluster has had no workers for 5 s")
    assert "dask worker" in last and "renalflow.no-workers-grace" in last
    assert "Traceback" not in done.stderr
    assert took < 90, f"took {took:.0f} s"


def test_the_no_workers_grace_is_read_from_the_dask_configuration():
    import dask

    from renalflow.flows.fanout import NO_WORKERS_GRACE_S, no_workers_grace_s
    from renalflow.tasks.errors import InputError

    assert no_workers_grace_s() == NO_WORKERS_GRACE_S
    with dask.config.set({"renalflow.no_workers_grace": 600}):
        assert no_workers_grace_s() == 600.0
    for bad in ("ten minutes", 0, None):
        with dask.config.set({"renalflow.no-workers-grace": bad}):
            with pytest.raises(InputError, match="give a number of seconds above 0"):
                no_workers_grace_s()
