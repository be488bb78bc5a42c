"""PACS retrieval benchmark: fetching an archive's studies from Orthanc over DICOMweb and
DIMSE, with 1, 2 and 4 studies at once, next to reading the same files from a folder.

Builds (or reuses) a synthetic archive of whole studies, starts Orthanc on loopback
(tasks/sources/orthanc.py, as the tests and `renalflow demo --pacs` do), sends it the
archive, then in one run measures, for each concurrency:

- DICOMweb and DIMSE: `tasks.sources.fetch.fetch_study` per study (its series and
  instance queries, then the retrieval of the CT series and SEGs it keeps) into an
  empty cache, studies spread over that many threads;
- folder: reading the bytes of the same files (those the fetch kept) from the archive
  folder, over the same number of threads.

Instances/s and MB/s count what was fetched (or read). No Prefect and no Dask: this is
what one worker's retrieval costs; the flows add a task per study.

Usage: python bench/bench_pacs.py [--patients 12] [--matrix 512] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
from common import add_workdir, machine

from renalflow.tasks.sources import parse_source
from renalflow.tasks.sources.credentials import PASSWORD_ENV, USER_ENV
from renalflow.tasks.sources.fetch import fetch_study, open_client
from renalflow.tasks.sources.orthanc import start_orthanc
from renalflow.tasks.sources.query import PacsSettings, study_skip_reason
from renalflow.tasks.synth import SynthConfig, synthesize_archive

CONCURRENCY = (1, 2, 4)


def build_archive(root: Path, patients: int, matrix: int) -> Path:
    archive = root / "archive"
    if not archive.exists():
        config = SynthConfig(patients=patients, seed=1818, matrix=matrix, study_slices=(24, 40))
        synthesize_archive(root, config)
    return archive


def fetch_all(uri: str, store: Path, concurrency: int) -> tuple[float, int, int]:
    """(seconds, instances, bytes) of fetching every CT study of `uri` into `store`."""
    shutil.rmtree(store, ignore_errors=True)
    settings = PacsSettings(concurrency=concurrency)
    source = parse_source(uri)
    client = open_client(source, settings)
    try:
        studies = [s for s in client.find_studies(None) if not study_skip_reason(s, settings.rule)]
    finally:
        client.close()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(lambda s: fetch_study(source, s, str(store), settings), studies))
    seconds = time.perf_counter() - started
    return seconds, sum(d.instances_fetched for d in done), sum(d.bytes_fetched for d in done)


def read_all(files: list[Path], concurrency: int) -> tuple[float, int, int]:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        sizes = list(pool.map(lambda p: len(p.read_bytes()), files))
    return time.perf_counter() - started, len(sizes), sum(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--matrix", type=int, default=512)
    add_workdir(parser, "pacs")
    args = parser.parse_args()
    work = Path(args.workdir)
    archive = build_archive(
        work / f"synth-{args.patients}-{args.matrix}", args.patients, args.matrix
    )
    files = sorted(p for p in archive.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    print(
        f"archive: {len(files):,} files, {size / 1e6:,.1f} MB, {args.patients} patients, "
        f"{args.matrix} px ({archive})"
    )
    print(machine())
    orthanc_dir = work / "orthanc"
    shutil.rmtree(orthanc_dir, ignore_errors=True)
    with start_orthanc(orthanc_dir) as pacs:
        started = time.perf_counter()
        pacs.upload(files)
        print(f"sent to Orthanc in {time.perf_counter() - started:.1f} s")
        os.environ[USER_ENV], os.environ[PASSWORD_ENV] = pacs.user, pacs.password
        by_sop = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
        rows = []
        kept: list[Path] = []
        for concurrency in CONCURRENCY:
            for name, uri in (("DICOMweb", pacs.dicomweb), ("DIMSE", pacs.dimse())):
                store = work / "store"
                seconds, n, nbytes = fetch_all(uri, store, concurrency)
                rows.append((name, concurrency, seconds, n, nbytes))
                if not kept:
                    cached = (store / "_pacs").rglob("*.dcm")
                    kept = [by_sop[p.name.removesuffix(".dcm")] for p in cached]
            seconds, n, nbytes = read_all(kept, concurrency)
            rows.append(("folder", concurrency, seconds, n, nbytes))
    print(
        f"\nfetched of the archive: {len(kept):,} files (abdominal CT and SEG; chest, head "
        "CT and scouts stay on the PACS)"
    )
    print(
        f"{'source':<9} {'studies at once':>15} {'seconds':>8} {'instances':>9} "
        f"{'inst/s':>8} {'MB/s':>7}"
    )
    for name, concurrency, seconds, n, nbytes in rows:
        print(
            f"{name:<9} {concurrency:>15} {seconds:>8.2f} {n:>9,} {n / seconds:>8.0f} "
            f"{nbytes / 1e6 / seconds:>7.1f}"
        )


if __name__ == "__main__":
    main()
