"""Fetching a PACS source before ingest: query in this process, then one task per study on
the Dask workers, at most `concurrency` at once (a PACS is a shared clinical system),
each retried with backoff on transient errors only; every study recorded in the
watermark the moment its fetch ends.

Wiring only: the work is in tasks/sources.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import fsspec
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.tasks import exponential_backoff

from renalflow.flows.fanout import (
    cluster_threads,
    finished_while_workers,
    retry_on_transient_io,
    worker_died,
)
from renalflow.tasks.sources import (
    PacsError,
    PacsSource,
    PacsUnavailableError,
    StudyNotDelivered,
    check_pacs_store,
    instances_folder,
    pacs_root,
    parse_source,
    plain_http_warning,
)
from renalflow.tasks.sources.fetch import (
    SourceSummary,
    StudyFetch,
    StudyPrune,
    cache_size,
    fetch_study,
    make_cache,
    open_client,
    prune_study,
)
from renalflow.tasks.sources.query import (
    PacsSettings,
    StudyRef,
    date_range,
    dicom_range,
    newest_date,
    study_skip_reason,
)
from renalflow.tasks.sources.report import (
    StudyResult,
    pending_reports,
    previous_reports,
    queue_reports,
    read_report,
    record_sent,
    report_for,
)
from renalflow.tasks.sources.watermark import (
    Delivery,
    StudyRecord,
    advance_watermark,
    is_delivered,
    read_watermark,
    record_study,
)

T = TypeVar("T")

FETCH_RETRIES = 3
"""Our choice: attempts after the first for a study whose PACS was busy or unreachable,
10, 20 then 40 s later (with jitter); after that the study is recorded as failed and
retried on the next run."""

# Every request to the PACS (fetching a study, sending a report) retries the same way.
PACS_TASK_OPTIONS: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": FETCH_RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=10),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_transient_io,
}


@task(name="fetch-study", **PACS_TASK_OPTIONS)
def fetch_study_task(
    source: PacsSource, study: StudyRef, store: str, settings: PacsSettings
) -> StudyFetch:
    return fetch_study(source, study, store, settings)


def bounded(
    submit: Callable[[T], PrefectFuture[Any]], items: list[T], limit: int
) -> Iterator[tuple[T, PrefectFuture[Any]]]:
    """Submit `items` keeping at most `limit` in flight; yield each with its future as it
    completes. A cluster without workers for the no-workers grace ends the wait."""
    finished: queue.SimpleQueue[PrefectFuture[Any]] = queue.SimpleQueue()
    waiting = list(reversed(items))
    running: dict[int, T] = {}

    def start() -> None:
        item = waiting.pop()
        future = submit(item)
        running[id(future)] = item
        future.add_done_callback(finished.put)

    while waiting and len(running) < max(1, limit):
        start()
    if not running:
        return
    for future in finished_while_workers(
        finished,
        lambda: f"{len(running) + len(waiting)} studies to fetch",
        "fetched studies",
    ):
        item = running.pop(id(future))
        if waiting:
            start()
        yield item, future
        if not running:
            return


def fetch_source(archive: str, store: str, settings: PacsSettings) -> SourceSummary:
    """Bring what the screening needs of the PACS `archive` into its cache in `store`:
    studies not delivered before, and those that failed before."""
    logger = get_run_logger()
    started = time.perf_counter()
    source = parse_source(archive)
    check_pacs_store(store)
    if warning := plain_http_warning(source):
        logger.warning(warning)
    root = pacs_root(store, source)
    mark = read_watermark(root)
    make_cache(store, source)
    dates = date_range(settings, mark.since)
    client = open_client(source, settings)
    try:
        client.check()
        listed = client.find_studies(dates)
    finally:
        client.close()
    summary = SourceSummary(archive, root, dicom_range(dates) or "any")
    summary.studies_listed = len(listed)
    todo: list[StudyRef] = []
    for study in listed:
        if is_delivered(mark, study):
            summary.already_delivered += 1
        elif reason := study_skip_reason(study, settings.rule):
            summary.studies_skipped[reason] += 1
        else:
            todo.append(study)
    queued = {study.study_instance_uid for study in todo}
    for record in mark.failed.values():
        if record.study.study_instance_uid not in queued:
            todo.append(record.study)
            summary.retried += 1
    logger.info(
        "%s: %d CT studies (StudyDate %s), %d delivered before, %d to fetch (%d failed "
        "before), %d at a time",
        source.uri,
        len(listed),
        summary.dates,
        summary.already_delivered,
        len(todo),
        len(mark.failed),
        settings.concurrency,
    )

    def submit(study: StudyRef) -> PrefectFuture[StudyFetch]:
        return fetch_study_task.submit(source, study, store, settings)

    delivered_dates = []
    for study, future in bounded(submit, todo, settings.concurrency):
        try:
            fetched: StudyFetch = future.result()
        except (StudyNotDelivered, PacsUnavailableError) as err:
            reason = str(err)
        except Exception as err:
            if not worker_died(err):
                raise
            reason = "the worker fetching it died"
        else:
            record_study(
                root, StudyRecord(study, Delivery.DELIVERED, "", fetched.instances_fetched)
            )
            summary.add(fetched)
            delivered_dates.append(study.study_date)
            continue
        logger.warning("study %s not delivered: %s", study.study_instance_uid, reason)
        record_study(root, StudyRecord(study, Delivery.FAILED, reason))
        summary.failed[study.study_instance_uid] = reason
    advance_watermark(root, newest_date(delivered_dates, mark.since))
    summary.cache_files, summary.cache_bytes = cache_size(store, source)
    summary.seconds = time.perf_counter() - started
    return summary


@task(name="send-report", **PACS_TASK_OPTIONS)
def send_report_task(source: PacsSource, path: str, root: str, settings: PacsSettings) -> str:
    report = read_report(path)
    client = open_client(source, settings)
    try:
        client.store(report)
    finally:
        client.close()
    record_sent(root, report)
    return str(report.SOPInstanceUID)


@task(
    name="prune-study", cache_policy=NO_CACHE, retries=2, retry_condition_fn=retry_on_transient_io
)
def prune_study_task(store: str, source: PacsSource, study: str) -> StudyPrune:
    return prune_study(store, source, study)


def prune_source(archive: str, store: str, summary: SourceSummary) -> None:
    """--prune-cache, after ingest: keep only the headers of the cached studies the
    watermark records as delivered whole (their instances are all in the store now), one
    task per study on the workers; a study whose worker dies is left as it was."""
    logger = get_run_logger()
    summary.prune_cache = True
    source = parse_source(archive)
    mark = read_watermark(pacs_root(store, source))
    fs, path = fsspec.core.url_to_fs(instances_folder(store, source))
    try:
        cached = {str(name).rsplit("/", 1)[-1] for name in fs.ls(path, detail=False)}
    except FileNotFoundError:
        cached = set()
    studies = sorted(cached & mark.delivered)
    logger.info("pruning the cache of %s: %d delivered studies", source.uri, len(studies))

    def submit(study: str) -> PrefectFuture[StudyPrune]:
        return prune_study_task.submit(store, source, study)

    for study, future in bounded(submit, studies, cluster_threads()):
        try:
            summary.add_prune(future.result())
        except Exception as err:
            if not worker_died(err):
                raise
            logger.warning("study %s not pruned: the worker pruning it died", study)
    summary.cache_files, summary.cache_bytes = cache_size(store, source)


def report_to_source(
    archive: str, store: str, results: list[StudyResult], settings: PacsSettings
) -> tuple[int, dict[str, str]]:
    """Write an SR for each study result into the source's folder, then send every SR
    not yet acknowledged (this run's and any an earlier run left pending), at most
    `concurrency` at once. Returns (sent, {SOPInstanceUID: reason} not sent)."""
    logger = get_run_logger()
    source = parse_source(archive)
    root = pacs_root(store, source)
    previous = previous_reports(root)
    queued = queue_reports(
        root,
        (report_for(result, previous.get(result.study_instance_uid, ())) for result in results),
    )
    pending = pending_reports(root)
    logger.info(
        "results back to %s: %d new SR documents, %d to send", source.uri, queued, len(pending)
    )

    def submit(path: str) -> PrefectFuture[str]:
        return send_report_task.submit(source, path, root, settings)

    sent = 0
    failed: dict[str, str] = {}
    for path, future in bounded(submit, pending, settings.concurrency):
        try:
            future.result()
        except PacsError as err:  # refused or still unreachable: kept pending, sent next run
            name = path.rsplit("/", 1)[-1].removesuffix(".dcm")
            failed[name] = str(err)
            logger.warning("SR %s not sent (kept; sent by the next run): %s", name, err)
        else:
            sent += 1
    return sent, failed
