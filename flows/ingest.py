"""The ingest flow: DICOM archive -> Parquet slice store, fanned out over Dask workers."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import as_completed
from prefect.runtime import flow_run

from renalflow.flows.fanout import (
    TASK_OPTIONS,
    Opaque,
    announce_run,
    attempts,
    balanced,
    cluster_threads,
    worker_died,
)
from renalflow.tasks.config import DEVELOPMENT, PreprocessConfig
from renalflow.tasks.dicom import RejectReason
from renalflow.tasks.ingest import (
    BatchReport,
    StagedBatch,
    commit_batch,
    convert_files,
    discover_files,
    group_files,
    quarantine,
    read_labels,
)
from renalflow.tasks.store import SLICES, check_manifest, clear_staging, read_ledger, read_table


def dask_setup(worker: object) -> None:
    """Dask preload hook (`--preload renalflow.flows.ingest`): a worker on another machine loads
    the object-storage credentials block too, when its environment names one."""
    from renalflow.flows.runtime import load_s3_credentials

    load_s3_credentials()


@task(name="convert-slices", **TASK_OPTIONS)
def convert_batch(
    store: str,
    uris: Opaque[list[str]],
    config: PreprocessConfig,
    cohort: str,
    labels: Opaque[dict[str, str]],
    run_id: str,
) -> StagedBatch:
    return convert_files(store, uris.value, config, cohort, labels.value, run_id)


@dataclass
class IngestSummary:
    """What an ingest run did, for the printed summary and for callers."""

    archive: str
    store: str
    run_id: str
    preprocess_version: str
    files_found: int = 0
    files_already_stored: int = 0
    files_new: int = 0
    slices: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    work_seconds: float = 0.0
    workers: int = 0
    convert_tasks: int = 0
    worker_slices: dict[str, int] = field(default_factory=dict)
    worker_seconds: dict[str, float] = field(default_factory=dict)
    labelled_patients_without_slices: int = 0

    @property
    def n_rejects(self) -> int:
        return sum(self.rejects.values())

    def add_batch(self, report: BatchReport) -> None:
        self.slices += report.n_slices
        self.rejects.update(report.rejects)
        worker = report.worker
        self.worker_slices[worker] = self.worker_slices.get(worker, 0) + report.n_slices
        self.worker_seconds[worker] = self.worker_seconds.get(worker, 0.0) + report.seconds


@flow(name="ingest", log_prints=True)
def ingest_flow(
    archive: str,
    store: str,
    labels: str | None = None,
    cohort: str = DEVELOPMENT,
    preprocess: PreprocessConfig | None = None,
    batch_size: int = 512,
) -> IngestSummary:
    """Convert every new DICOM file under `archive` into the slice store at `store`.

    Files already in the store (as a slice or a reject) are skipped, so a rerun after
    a crash or after the archive grew does only the missing work.
    """
    announce_run("ingest")
    run_id = str(flow_run.get_id() or "local")
    return run_ingest(archive, store, labels, cohort, preprocess, batch_size, run_id)


def run_ingest(
    archive: str,
    store: str,
    labels: str | None,
    cohort: str,
    preprocess: PreprocessConfig | None,
    batch_size: int,
    run_id: str,
) -> IngestSummary:
    """The ingest flow's work, on the task runner of whichever flow calls it (the score
    flow ingests new files this way, on its own cluster)."""
    logger = get_run_logger()
    started = time.perf_counter()
    config = preprocess or PreprocessConfig()
    summary = IngestSummary(archive, store, run_id, config.version)
    check_manifest(store, config.to_dict(), config.version)
    stale = clear_staging(store)  # batches crashed runs converted but never committed
    if stale:
        logger.info("removed %d uncommitted batches left by an interrupted run", stale)
    label_map = read_labels(labels) if labels else {}

    found = discover_files(archive)
    ledger = read_ledger(store)
    pending = [uri for uri in found if uri not in ledger.source_uris]
    summary.files_found = len(found)
    summary.files_already_stored = len(found) - len(pending)
    summary.files_new = len(pending)
    logger.info(
        "%d files under %s: %d already in the store, %d to ingest",
        len(found),
        archive,
        summary.files_already_stored,
        len(pending),
    )

    threads = cluster_threads()
    summary.workers = threads
    work_started = time.perf_counter()
    # Each Prefect task run costs ~0.1 s of client set-up on its worker, so batches are
    # large: about three tasks per worker thread, at most `batch_size` files each.
    batches = group_files(pending, balanced(len(pending), threads * 3, 32, batch_size))

    def submit(files: list[str]) -> Any:
        return convert_batch.submit(store, Opaque(files), config, cohort, Opaque(label_map), run_id)

    work = [(submit(batch), batch) for batch in batches]
    summary.convert_tasks = len(work)
    # Workers convert in parallel; this process commits each batch as it arrives,
    # the only place that sees every batch and so can tell duplicates apart.
    stored = dict(ledger.sop_sources)
    files_done = 0
    done = 0
    while work:
        files_of = {id(future): files for future, files in work}
        futures = [future for future, _ in work]
        work = []
        for future in as_completed(futures):
            try:
                staged = future.result()
            except Exception as err:
                if not worker_died(err):
                    raise
                files = files_of[id(future)]
                if len(files) > 1:
                    # A file in this batch kills the process converting it: convert the
                    # batch's files one by one to find it, and keep the others.
                    logger.warning(
                        "the worker converting a batch of %d files died %d times; converting "
                        "them one by one to find the file that kills it",
                        len(files),
                        attempts(),
                    )
                    work += [(submit([uri]), [uri]) for uri in files]
                    summary.convert_tasks += len(files)
                else:
                    logger.error("quarantined %s: it kills the worker converting it", files[0])
                    quarantine(store, files[0], attempts(), cohort, run_id, config.version)
                    summary.rejects[RejectReason.CRASHED_WORKER.value] += 1
                    files_done += 1
                continue
            done += 1
            summary.add_batch(staged.report)
            files_done += staged.report.n_files
            duplicates = commit_batch(store, staged, stored, cohort, run_id, config.version)
            summary.slices -= len(duplicates)
            summary.rejects.update(r.code.value for r in duplicates)
            elapsed = time.perf_counter() - started
            logger.info(
                "[%d/%d batches] %d/%d files, %d slices, %d rejects, %.0f slices/s",
                done,
                summary.convert_tasks,
                files_done,
                len(pending),
                summary.slices,
                summary.n_rejects,
                summary.slices / max(elapsed, 1e-9),
            )
    clear_staging(store, run_id=run_id)

    if label_map:
        stored_patients = _patients_in_store(store)
        summary.labelled_patients_without_slices = len(set(label_map) - stored_patients)
    summary.seconds = time.perf_counter() - started
    summary.work_seconds = time.perf_counter() - work_started
    logger.info(
        "ingest finished: %d slices, %d rejects in %.1f s",
        summary.slices,
        summary.n_rejects,
        summary.seconds,
    )
    return summary


def _patients_in_store(store: str) -> set[str]:
    table = read_table(store, SLICES, ["patient_id"])
    return set(table.column("patient_id").to_pylist())


def summary_dict(summary: IngestSummary) -> dict[str, Any]:
    """The summary as plain JSON-ready values (for `--summary-json` and scripts)."""
    out = asdict(summary)
    out["rejects"] = dict(summary.rejects)
    out["n_rejects"] = summary.n_rejects
    return out


def format_summary(summary: IngestSummary) -> str:
    """A readable end-of-run summary: files, slices, rejects by reason, speed per worker."""
    lines = [
        f"ingest run {summary.run_id}  (preprocess_version {summary.preprocess_version})",
        f"  archive          {summary.archive}",
        f"  store            {summary.store}",
        f"  files found      {summary.files_found:>8,}",
        f"  already stored   {summary.files_already_stored:>8,}",
        f"  new files        {summary.files_new:>8,}",
        f"  slices written   {summary.slices:>8,}",
        f"  rejects          {summary.n_rejects:>8,}",
    ]
    for code, count in summary.rejects.most_common():
        lines.append(f"    {code:<22} {count:>6,}")
    rate = summary.slices / summary.seconds if summary.seconds else 0.0
    lines.append(f"  wall time        {summary.seconds:>8.1f} s  ({rate:,.0f} slices/s overall)")
    if summary.work_seconds and summary.workers:
        per_core = summary.slices / summary.work_seconds / summary.workers
        lines.append(
            f"  on the cluster   {summary.work_seconds:>8.1f} s  ({per_core:,.0f} slices/s per "
            f"worker thread, {summary.workers} threads)"
        )
    lines.append(f"  tasks            {summary.convert_tasks} conversion batches")
    for worker, slices in sorted(summary.worker_slices.items()):
        busy = summary.worker_seconds[worker]
        per = slices / busy if busy else 0.0
        lines.append(
            f"  worker {worker:<24} {slices:>7,} slices in {busy:6.1f} s busy ({per:,.0f} slices/s)"
        )
    if summary.labelled_patients_without_slices:
        lines.append(
            f"  note: {summary.labelled_patients_without_slices} labelled patients have no "
            "slices in the store"
        )
    lines.append(
        '  read with: python -c "import duckdb; duckdb.sql(\\"select count(*) from \''
        f'{summary.store.rstrip("/")}/slices/*.parquet\'\\").show()"'
    )
    return "\n".join(lines)
