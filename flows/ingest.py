"""The ingest flow: DICOM archive -> Parquet slice store, fanned out over Dask workers."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from renalflow.flows.fanout import (
    TASK_OPTIONS,
    Opaque,
    announce_run,
    attempts,
    balanced,
    cluster_threads,
    completed_batches,
)
from renalflow.flows.pacs import fetch_source, prune_source
from renalflow.flows.runtime import load_s3_credentials
from renalflow.tasks.config import DEVELOPMENT, PreprocessConfig
from renalflow.tasks.ingest import (
    StagedBatch,
    commit_batch,
    convert_files,
    group_files,
    ingest_lesions_csv,
    quarantine,
)
from renalflow.tasks.ingest_run import IngestSummary, format_summary, plan_ingest, summary_dict
from renalflow.tasks.sources import archive_folder, is_pacs
from renalflow.tasks.sources.query import PacsSettings
from renalflow.tasks.store import clear_staging

# The summary and its formats live with the ingest logic; callers import them from here.
__all__ = ["IngestSummary", "format_summary", "ingest_flow", "run_ingest", "summary_dict"]


def dask_setup(worker: object) -> None:
    """Dask preload hook (`--preload renalflow.flows.ingest`): a worker on another machine loads
    the object-storage credentials block too, when its environment names one."""
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


@flow(name="ingest", log_prints=True)
def ingest_flow(
    archive: str,
    store: str,
    labels: str | None = None,
    cohort: str = DEVELOPMENT,
    preprocess: PreprocessConfig | None = None,
    batch_size: int = 512,
    lesions: str | None = None,
    pacs: PacsSettings | None = None,
) -> IngestSummary:
    """Convert every new DICOM file under `archive` into the slice store at `store`.

    Files already in the store (as a slice or a reject) are skipped, so a rerun after
    a crash or after the archive grew does only the missing work. A PACS archive is
    queried first and its new studies fetched into the store's cache (flows/pacs.py).
    """
    announce_run("ingest")
    run_id = str(flow_run.get_id() or "local")
    return run_ingest(archive, store, labels, cohort, preprocess, batch_size, run_id, lesions, pacs)


def run_ingest(
    archive: str,
    store: str,
    labels: str | None,
    cohort: str,
    preprocess: PreprocessConfig | None,
    batch_size: int,
    run_id: str,
    lesions: str | None = None,
    pacs: PacsSettings | None = None,
) -> IngestSummary:
    """The ingest flow's work, on the task runner of whichever flow calls it (the score
    flow ingests new files this way, on its own cluster)."""
    logger = get_run_logger()
    started = time.perf_counter()
    config = preprocess or PreprocessConfig()
    summary = IngestSummary(archive, store, run_id, config.version)
    if lesions:
        summary.lesion_rows = ingest_lesions_csv(store, lesions, run_id)
        logger.info("%d lesion ranges from %s", summary.lesion_rows, lesions)
    if is_pacs(archive):  # fetched into the store's cache, then ingested like a folder
        summary.source = fetch_source(archive, store, pacs or PacsSettings())
    plan = plan_ingest(archive_folder(archive, store), store, labels, config)
    summary.add_plan(plan)
    if plan.stale_batches:
        logger.info("removed %d uncommitted batches left by an interrupted run", plan.stale_batches)
    logger.info(
        "%d files under %s: %d already in the store, %d to ingest",
        plan.files_found,
        archive,
        plan.files_already_stored,
        len(plan.pending),
    )

    summary.workers = cluster_threads()
    work_started = time.perf_counter()
    # Each Prefect task run costs ~0.1 s of client set-up on its worker, so batches are
    # large: about three tasks per worker thread, at most `batch_size` files each.
    size = balanced(len(plan.pending), summary.workers * 3, 32, batch_size)
    batches = group_files(plan.pending, size)

    def submit(files: list[str]) -> Any:
        return convert_batch.submit(
            store, Opaque(files), config, cohort, Opaque(plan.labels), run_id
        )

    def split(files: list[str]) -> None:
        # A file in this batch kills the process converting it: its files are converted
        # one by one to find it, and the others are kept.
        logger.warning(
            "the worker converting a batch of %d files died %d times; converting "
            "them one by one to find the file that kills it",
            len(files),
            attempts(),
        )
        summary.convert_tasks += len(files)

    summary.convert_tasks = len(batches)
    # Workers convert in parallel; this process commits each batch as it arrives,
    # the only place that sees every batch and so can tell duplicates apart.
    files_done = done = 0
    for files, staged in completed_batches(submit, batches, on_split=split):
        if staged is None:
            logger.error("quarantined %s: it kills the worker converting it", files[0])
            quarantine(store, files[0], attempts(), cohort, run_id, config.version)
            summary.add_quarantined()
            files_done += 1
            continue
        done += 1
        summary.add_batch(staged.report)
        files_done += staged.report.n_files
        duplicates = commit_batch(store, staged, plan.stored, cohort, run_id, config.version)
        summary.add_duplicates(duplicates)
        logger.info(
            "[%d/%d batches] %d/%d files, %d slices, %d rejects, %.0f slices/s",
            done,
            summary.convert_tasks,
            files_done,
            len(plan.pending),
            summary.slices,
            summary.n_rejects,
            summary.slices / max(time.perf_counter() - started, 1e-9),
        )
    clear_staging(store, run_id=run_id)

    summary.add_unstored_patients(plan.labels)
    if summary.source is not None and pacs is not None and pacs.prune_cache:
        prune_source(archive, store, summary.source)  # every delivered study is stored now
    summary.seconds = time.perf_counter() - started
    summary.work_seconds = time.perf_counter() - work_started
    logger.info(
        "ingest finished: %d slices, %d rejects in %.1f s",
        summary.slices,
        summary.n_rejects,
        summary.seconds,
    )
    return summary
