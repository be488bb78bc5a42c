"""Start-up benchmark: how long `renalflow ingest` takes to start its flow without a
Prefect server, and the whole command against a naive one-process export.

Builds (or reuses) a synthetic archive with `renalflow synth --patients N --workers 2`,
then runs `renalflow -v ingest` into a new store for each way of getting a Prefect API:

- before: Prefect's own temporary server (`SubprocessASGIServer`), started by every
  command, as renalflow did until 2026-12-03;
- first ever: renalflow's local server on a new database (migrations included);
- cold: renalflow's local server started by the command (its database exists);
- warm: the server a previous command left warm (the usual case);
- per command: `RENALFLOW_SERVER_IDLE=0`, a server started and stopped by the command.

"To flow start" is from launching the command to Prefect's "Beginning flow run" line.
The baseline is one process: pydicom read + `renalflow.tasks.convert.convert_file` for
every file, then one Parquet file; "speed-up" is the baseline's time over the command's.
"before" replaces only the Prefect API: everything else is today's code. The local
server's state lives in WORKDIR/home (RENALFLOW_HOME) and is stopped at the end.

Usage: python bench/bench_startup.py [--patients 140] [--workers 2] [--workdir DIR]
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import machine, script_parser

# Prefect's own temporary server, as `prefect_api()` used it before the local server
# (the reference the figures are compared with).
BEFORE = """
import contextlib, os, sys
import renalflow.flows.runtime as runtime

@contextlib.contextmanager
def prefect_api():
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)

runtime.prefect_api = prefect_api
from renalflow.flows.cli import main
sys.exit(main(sys.argv[1:]))
"""
AFTER = "import sys; from renalflow.flows.cli import main; sys.exit(main(sys.argv[1:]))"
BEGIN = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \| INFO .* Beginning flow run", re.M)


def build_archive(root: Path, patients: int, workers: int) -> tuple[Path, int]:
    """`renalflow synth` output, reused when it has the same number of patients."""
    record = root / "synth.json"
    if not (record.exists() and json.loads(record.read_text())["patients"] == patients):
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "renalflow.flows.cli", "synth", "--out", str(root),
             "--patients", str(patients), "--workers", str(workers)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return root / "archive", int(json.loads(record.read_text())["slices"])


def baseline(archive: Path, out: Path) -> float:
    """One process: convert every file, then write one Parquet file."""
    from renalflow.tasks.config import PreprocessConfig
    from renalflow.tasks.convert import convert_file
    from renalflow.tasks.dicom import RejectedFile

    config = PreprocessConfig()
    started = time.perf_counter()
    rows: dict[str, list[object]] = {"path": [], "window_center": [], "pixels": []}
    for path in sorted(p for p in archive.rglob("*") if p.is_file()):
        try:
            converted = convert_file(str(path), config)
        except RejectedFile:
            continue
        rows["path"].append(str(path))
        rows["window_center"].append(converted.window_center)
        rows["pixels"].append(converted.pixels.tobytes())
    pq.write_table(pa.table(rows), out)
    return time.perf_counter() - started


def run_ingest(
    archive: Path, store: Path, workers: int, env: dict[str, str], code: str
) -> tuple[float, float]:
    """(seconds to the flow's start, seconds for the whole command)."""
    shutil.rmtree(store, ignore_errors=True)
    cmd = [sys.executable, "-c", code, "-v", "ingest", str(archive), "--store", str(store),
           "--workers", str(workers)]  # fmt: skip
    launched = time.time()
    started = time.perf_counter()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
    match = BEGIN.search(run.stderr)
    if not match:
        raise SystemExit(f"no 'Beginning flow run' line in:\n{run.stderr[-3000:]}")
    day = dt.datetime.fromtimestamp(launched)
    h, m, s, ms = (int(g) for g in match.groups())
    begun = day.replace(hour=h, minute=m, second=s, microsecond=ms * 1000).timestamp()
    return begun - launched, wall


def main() -> int:
    parser = script_parser(__doc__, workdir="startup")
    parser.add_argument("--patients", type=int, default=140)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    print(machine())
    archive, n = build_archive(root / "synth", args.patients, args.workers)
    print(f"archive: {n} slices from `renalflow synth --patients {args.patients}`")

    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import renalflow.flows.jobs"], check=True)
    print(f"importing the CLI's flows (Prefect, Dask): {time.perf_counter() - started:.1f} s")

    base = baseline(archive, root / "baseline.parquet")
    print(f"baseline, 1 process (convert_file + one Parquet file): {base:.1f} s")

    home = root / "home"
    shutil.rmtree(home, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update({"RENALFLOW_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    env.pop("RENALFLOW_SERVER_IDLE", None)
    store = root / "store"
    results: list[tuple[str, float, float]] = []

    def measure(label: str, code: str = AFTER, **extra: str) -> None:
        to_flow, wall = run_ingest(archive, store, args.workers, {**env, **extra}, code)
        results.append((label, to_flow, wall))
        print(f"{label:44s} to flow start {to_flow:5.1f} s   whole command {wall:5.1f} s   "
              f"speed-up over the baseline {base / wall:.2f}x   "
              f"(load {os.getloadavg()[0]:.1f})")  # fmt: skip

    from renalflow.flows import runtime

    os.environ["RENALFLOW_HOME"] = str(home)
    try:
        measure("first ever (new database, server kept warm)")
        measure("warm (server left by the previous command)")
        measure("warm, again")
        runtime.stop_api_server()
        measure("cold (server started, database exists)")
        runtime.stop_api_server()
        measure("per command (RENALFLOW_SERVER_IDLE=0)", RENALFLOW_SERVER_IDLE="0")
        measure("before: Prefect's temporary server", BEFORE)
    finally:
        runtime.stop_api_server()
    return 0


if __name__ == "__main__":
    sys.exit(main())
