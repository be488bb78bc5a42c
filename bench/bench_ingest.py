"""Ingest benchmark: `renalflow ingest` against the paper's naive export path.

Builds an archive of at least 4,000 uncompressed 512x512 CT slices, then measures in
the same run:

- baseline: one process, pydicom read -> HU -> window -> Pillow resize -> one PNG per
  slice (how the study's images were exported and loaded);
- `renalflow ingest` as a whole command, with a temporary Prefect server (what a
  first-time user runs) and with an already running Prefect server (production);
- slices/s per worker once the cluster is up, from the run's own summary.

Usage: python bench/bench_ingest.py [--slices 4000] [--workdir DIR] [--workers N]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from common import machine, script_parser
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian

from renalflow.tasks.synth import SynthConfig, synthesize_archive


def build_archive(root: Path, slices: int) -> tuple[Path, int]:
    """Synthetic uncompressed archive with at least `slices` files (reused if present)."""
    archive = root / "archive"
    if archive.exists():
        count = sum(1 for p in archive.rglob("*") if p.is_file())
        if count >= slices:
            return archive, count
        shutil.rmtree(root)
    patients = max(10, slices // 45)
    while True:
        config = SynthConfig(
            patients=patients,
            seed=4000,
            max_slices_per_series=30,
            lesion_only=True,
            syntaxes={str(ExplicitVRLittleEndian): 1.0},
        )
        report = synthesize_archive(root, config)
        if report.slices >= slices:
            return archive, report.slices
        shutil.rmtree(root)
        patients = int(patients * slices / max(report.slices, 1) * 1.1) + 1


def baseline(archive: Path, out: Path, center: float = 40, width: float = 400) -> float:
    """The naive single-process export: one PNG per slice."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for i, path in enumerate(sorted(p for p in archive.rglob("*") if p.is_file())):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        low = center - width / 2
        img = np.clip((hu - low) / width * 255.0, 0, 255).astype(np.uint8)
        small = Image.fromarray(img).resize((224, 224), Image.Resampling.NEAREST)
        small.save(out / f"{i:06d}.png")
    return time.perf_counter() - started


def run_ingest(archive: Path, store: Path, workers: int, env: dict[str, str]) -> tuple[float, dict]:
    if store.exists():
        shutil.rmtree(store)
    summary_path = store.parent / f"{store.name}.json"
    cmd = [
        sys.executable,
        "-m",
        "renalflow.flows.cli",
        "ingest",
        str(archive),
        "--store",
        str(store),
        "--workers",
        str(workers),
        "--summary-json",
        str(summary_path),
    ]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return wall, json.loads(summary_path.read_text())


def main() -> int:
    parser = script_parser(__doc__, workdir="ingest")
    parser.add_argument("--slices", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)

    print(machine())
    t0 = time.perf_counter()
    archive, n = build_archive(root / "data", args.slices)
    built = time.perf_counter() - t0
    print(f"archive: {n} uncompressed 512x512 slices ({built:.0f} s to build or reuse)")

    base = baseline(archive, root / "baseline_png")
    print(f"baseline (1 process, PNG per slice): {base:7.1f} s  {n / base:6.0f} slices/s")

    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    wall_tmp, summary_tmp = run_ingest(archive, root / "store_tmp", args.workers, env)

    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    try:
        env_server = {**env, "PREFECT_API_URL": server.api_url}
        run_ingest(archive, root / "store_warm", args.workers, env_server)  # warm the server's DB
        wall_srv, summary_srv = run_ingest(archive, root / "store_srv", args.workers, env_server)
    finally:
        server.stop()

    for label, wall, summary in (
        ("ingest, temporary Prefect server", wall_tmp, summary_tmp),
        ("ingest, running Prefect server  ", wall_srv, summary_srv),
    ):
        assert summary["slices"] == n, summary
        per_core = summary["slices"] / summary["work_seconds"] / summary["workers"]
        busy = sum(summary["worker_seconds"].values())
        print(
            f"{label}: {wall:7.1f} s  {n / wall:6.0f} slices/s  ratio to baseline "
            f"{wall / base:.2f}  | once the cluster is up {summary['work_seconds']:.1f} s, "
            f"{per_core:.0f} slices/s per worker ({summary['workers']} workers); "
            f"{summary['slices'] / busy:.0f} slices/s per busy worker-second"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
