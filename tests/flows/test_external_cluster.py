"""Ingest on a separately started `dask scheduler` and `dask worker`s, as on a site's
cluster, and losing a worker to SIGKILL half-way through."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from renalflow.flows.ingest import ingest_flow
from renalflow.tasks.ingest import discover_files
from renalflow.tasks.store import REJECTS, SLICES, read_table
from renalflow.tasks.synth import SynthConfig, synthesize_archive

BIN = Path(sys.executable).parent


@pytest.fixture
def cluster(prefect_api, tmp_path) -> Iterator[str]:
    """`dask scheduler` plus `dask worker --nworkers 2` (with nannies) on loopback."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    scheduler = subprocess.Popen(
        [
            *(BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0"),
            *("--dashboard-address", ":0", "--scheduler-file", str(scheduler_file)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    workers = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        workers = subprocess.Popen(
            [
                *(BIN / "dask", "worker", address, "--nworkers", "2", "--nthreads", "1"),
                *("--host", "127.0.0.1", "--preload", "renalflow.flows.ingest", "--no-dashboard"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        if workers is not None:
            os.killpg(workers.pid, signal.SIGTERM)
            workers.wait(60)
        scheduler.terminate()
        scheduler.wait(60)


def archive(root: Path) -> str:
    synthesize_archive(
        root, SynthConfig(patients=8, seed=12, max_slices_per_series=6, lesion_only=True), jobs=2
    )
    return str(root / "archive")


def accounted(store: str) -> Counter[str]:
    slices = read_table(store, SLICES, ["source_uri"]).column("source_uri").to_pylist()
    rejects = read_table(store, REJECTS, ["source_uri"]).column("source_uri").to_pylist()
    return Counter(slices + rejects)


def run_ingest(address: str, source: str, store: str, batch_size: int):
    from prefect_dask import DaskTaskRunner

    flow = ingest_flow.with_options(task_runner=DaskTaskRunner(address=address))
    return flow(archive=source, store=store, batch_size=batch_size)


def test_ingest_on_an_external_scheduler_and_workers(cluster, tmp_path):
    source, store = archive(tmp_path / "synth"), str(tmp_path / "store")
    summary = run_ingest(cluster, source, store, 512)
    files = discover_files(source)
    assert summary.files_new == len(files) and summary.slices == len(files)
    assert accounted(store) == Counter(files)
    assert len(summary.worker_slices) == 2, "both external workers should have converted"


def test_a_worker_killed_mid_ingest_loses_and_duplicates_nothing(cluster, tmp_path):
    from distributed import Client

    source, store = archive(tmp_path / "synth"), str(tmp_path / "store")
    files = discover_files(source)
    with Client(cluster) as client:
        pids = client.run(os.getpid)
    victim = next(iter(pids.values()))
    staged = Path(store) / "_staging"

    def kill_when_work_started() -> None:
        deadline = time.monotonic() + 120
        # Small batches, so the victim is busy converting when it dies.
        while time.monotonic() < deadline:
            if staged.exists() and any(staged.rglob("*.parquet")):
                break
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_work_started)
    killer.start()
    summary = run_ingest(cluster, source, store, 32)
    killer.join()
    with Client(cluster) as client:
        # The scheduler may still list the dead worker for a moment: those that cannot
        # answer are skipped, and a live victim would answer with its pid.
        alive = client.run(os.getpid, on_error="ignore").values()
        assert victim not in alive, "the worker was not killed"
    assert accounted(store) == Counter(files), "every file exactly once"
    assert summary.slices == len(files)


def _peak_rss() -> int:
    """This process's peak resident memory in bytes, since it started its program:
    VmHWM, not getrusage's ru_maxrss, which Linux carries over from the parent that
    forked and exec'd the worker (the test process, after whatever ran before)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_memory_per_worker_stays_bounded_on_a_large_archive(prefect_api, tmp_path):
    """An archive of over 1 GB through workers limited to 700 MiB each: no worker is
    restarted for memory and none comes near its limit."""
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner
    from pydicom.uid import ExplicitVRLittleEndian

    config = SynthConfig(
        patients=70,
        seed=21,
        max_slices_per_series=30,
        lesion_only=True,
        syntaxes={str(ExplicitVRLittleEndian): 1.0},
    )
    synthesize_archive(tmp_path / "synth", config, jobs=2)
    source = tmp_path / "synth" / "archive"
    size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert size > 1_000_000_000, f"archive is only {size / 1e9:.2f} GB"
    limit = 700 * 2**20
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit=limit,
            preload=["renalflow.flows.ingest"],
        ) as cluster,
        Client(cluster) as client,
    ):
        before = client.run(os.getpid)
        store = str(tmp_path / "store")
        summary = ingest_flow.with_options(
            task_runner=DaskTaskRunner(address=cluster.scheduler_address)
        )(archive=str(source), store=store)
        assert client.run(os.getpid) == before, "a worker was restarted"
        peaks = client.run(_peak_rss)
    assert summary.slices == summary.files_new == len(discover_files(str(source)))
    assert max(peaks.values()) < 0.8 * limit, f"peak worker memory {peaks}"


def poison_rle(path: Path, side: int = 24576) -> Path:
    """A small RLE Lossless CT file whose header promises a side x side 16-bit image:
    decoding it needs over 1 GB, which kills a worker with a smaller memory limit."""
    import struct

    import numpy as np
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    from tests.factory import make_ct

    ds = make_ct(np.zeros((16, 16), np.uint16))
    ds.Rows = ds.Columns = side
    # PackBits: a run header of -127 repeats the next byte 128 times.
    segment = b"\x81\x00" * (side * side // 128)
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    ds.PixelData = encapsulate([header + segment + segment])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


KILLER = """
import os

import renalflow.flows.ingest  # noqa: F401  (the preload renalflow's workers use)
import renalflow.tasks.ingest as ingest

if not hasattr(ingest, "_real_convert_file"):  # Dask may run a preload more than once
    ingest._real_convert_file = ingest.convert_file

    def _convert_or_die(fp, config, *rest):
        # A decoder crash the guards cannot see (a segfault in a codec): the process dies.
        if "poison" in str(fp):
            os._exit(70)
        return ingest._real_convert_file(fp, config, *rest)

    ingest.convert_file = _convert_or_die
"""


def test_a_file_that_kills_its_worker_is_quarantined(prefect_api, tmp_path):
    import dask
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    source = Path(archive(tmp_path / "synth"))
    # A file that is fine by every declared size but kills the process decoding it.
    poison = source / "zz" / "poison.dcm"
    poison.parent.mkdir(parents=True)
    poison.write_bytes(next(source.rglob("*.dcm")).read_bytes())
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    # Dask gives up on a task after its first worker death here (3 in production).
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit="700MiB",
            preload=[str(killer)],
        ) as cluster,
    ):
        store = str(tmp_path / "store")
        summary = ingest_flow.with_options(
            task_runner=DaskTaskRunner(address=cluster.scheduler_address)
        )(archive=str(source), store=store)
    files = discover_files(str(source))
    assert accounted(store) == Counter(files), "every file exactly once, the poison included"
    rejects = read_table(store, REJECTS, ["source_uri", "reason_code", "reason"]).to_pylist()
    crashed = [r for r in rejects if r["reason_code"] == "crashed_worker"]
    assert [r["source_uri"] for r in crashed] == [f"file://{poison}"]
    assert "died" in crashed[0]["reason"]
    assert summary.slices == len(files) - 1


def test_the_old_poison_is_now_refused_from_its_header(tmp_path):
    """The RLE file that used to kill workers (a 16x16 image promising 24576 x 24576)
    is a too_large reject before any decoding."""
    import pytest

    from renalflow.tasks.config import PreprocessConfig
    from renalflow.tasks.convert import convert_file
    from renalflow.tasks.dicom import RejectedFile, RejectReason

    with pytest.raises(RejectedFile, match="24576 x 24576 pixels") as info:
        convert_file(str(poison_rle(tmp_path / "poison.dcm")), PreprocessConfig())
    assert info.value.code is RejectReason.TOO_LARGE


@pytest.mark.slow
def test_chaos_workers_killed_at_random_during_ingest_and_scoring(cluster, tmp_path, monkeypatch):
    """A seeded chaos run: worker processes are SIGKILLed at random moments while an
    archive is ingested and then scored; their nannies restart them. Every file is
    accounted for exactly once, every study voted once, every image scored once."""
    import random

    from distributed import Client
    from prefect_dask import DaskTaskRunner

    from renalflow.flows.score import score_flow
    from renalflow.tasks.config import PreprocessConfig
    from renalflow.tasks.model import profile_config
    from renalflow.tasks.pseudonym import KEY_ENV
    from renalflow.tasks.query import run_query
    from renalflow.tasks.score import ScoreConfig
    from renalflow.tasks.split import SplitConfig
    from renalflow.tasks.train import train_model

    monkeypatch.setenv(KEY_ENV, "chaos-test-key-0123456789abcdef")
    root = tmp_path / "synth"
    synthesize_archive(
        root, SynthConfig(patients=10, seed=77, max_slices_per_series=8, lesion_only=True), jobs=2
    )
    source, store = str(root / "archive"), str(tmp_path / "store")
    files = discover_files(source)
    chaos = random.Random(2020)  # seeded: the same kills every run
    kills: list[str] = []

    def killer(stop: threading.Event, times: int) -> None:
        for _ in range(times):
            if stop.wait(chaos.uniform(0.5, 2.0)):
                return
            with Client(cluster) as client:
                pids = sorted(client.run(os.getpid).values())
            if not pids:  # every worker is restarting after the last kill
                continue
            victim = chaos.choice(pids)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
                kills.append(f"worker {victim}")

    def with_chaos(times: int, run):
        stop = threading.Event()
        thread = threading.Thread(target=killer, args=(stop, times))
        thread.start()
        try:
            return run()
        finally:
            stop.set()
            thread.join()

    runner = DaskTaskRunner(address=cluster)
    preprocess = PreprocessConfig(output_size=64)
    with_chaos(3, lambda: ingest_flow.with_options(task_runner=runner)(
        archive=source, store=store, labels=str(root / "labels.csv"), preprocess=preprocess,
        batch_size=8,
    ))  # fmt: skip
    assert accounted(store) == Counter(files), "ingest: every file exactly once"
    ingest_kills = len(kills)

    model = tmp_path / "model"
    train_model(store, model, profile_config("cpu-demo", input_size=64, epochs=1), SplitConfig())
    results = str(tmp_path / "R")
    summary = with_chaos(2, lambda: score_flow.with_options(task_runner=DaskTaskRunner(
        address=cluster))(archive=source, model_dir=str(model), results=results, store=store,
                          config=ScoreConfig(all_slices=True)))  # fmt: skip
    votes = run_query(results, "select count(*) n, count(distinct study_key) k from study_votes")
    assert votes.to_pylist() == [{"n": summary.studies_in_archive, "k": summary.studies_in_archive}]
    images = run_query(
        results, "select count(*) n, count(distinct image_key) k from slice_scores"
    ).to_pylist()[0]
    assert images["n"] == images["k"] == len(files), "scoring: every image exactly once"
    print(f"chaos: {ingest_kills} kills during ingest, {len(kills) - ingest_kills} during "
          f"scoring; {len(files)} files, {summary.studies_in_archive} studies, no row lost "
          "or doubled")  # fmt: skip
    assert kills, "the chaos run killed nothing"
