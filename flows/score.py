"""The score flow: screen an archive with a trained model into the results table R.

Incremental: files already in the slice store are not converted again, and studies this
model version has already voted on are not scored again, so a nightly run over an
archive that grew by 50 studies does the work of 50 studies.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import dask
from prefect import flow, get_run_logger, task
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from renalflow.flows.fanout import (
    TASK_OPTIONS,
    Opaque,
    announce_run,
    balanced,
    cluster_threads,
    cores_per_worker_thread,
    while_workers,
)
from renalflow.flows.ingest import run_ingest
from renalflow.tasks.config import SCREENING
from renalflow.tasks.errors import InputError
from renalflow.tasks.inference import (
    ScoredBatch,
    SelectorRef,
    explain_slices,
    load_selector,
    score_slices,
)
from renalflow.tasks.model_dir import read_model_info, training_membership
from renalflow.tasks.pseudonym import NO_KEY_HELP, check_key, key_from_env, key_id
from renalflow.tasks.results import (
    SelectorUsed,
    ensure_tables,
    result_rows,
    scored_studies,
    tally_votes,
    write_results,
)
from renalflow.tasks.score import (
    ScoreConfig,
    ScoreSummary,
    batch_parts,
    default_heatmap_dir,
    default_store,
    format_summary,
    plan_explanations,
    plan_scoring,
    plan_selection,
    score_batches,
    summary_dict,
)
from renalflow.tasks.selection import select_slices
from renalflow.tasks.sources import archive_folder, is_pacs
from renalflow.tasks.sources.query import PacsSettings
from renalflow.tasks.store import read_inventory, store_for

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from renalflow.tasks.selection import StudySelection

# The summary and its formats live with the scoring logic; callers import them from here.
__all__ = ["ScoreSummary", "default_store", "format_summary", "score_flow", "summary_dict"]


def _batches(slices: Any, workers: int) -> list[Any]:
    """Tasks of about balanced size, two per worker thread, within [64, 2048] images."""
    if len(slices) == 0:
        return []
    return score_batches(slices, balanced(len(slices), workers * 2, 64, 2048))


def resolve_key(key_secret: str | None = None) -> bytes:
    """The pseudonymisation key: RENALFLOW_PSEUDONYM_KEY, else the named Prefect Secret
    block. Never a flow parameter, so it never reaches Prefect's database or logs."""
    from_env = key_from_env()
    if from_env is not None:
        return from_env
    if key_secret:
        try:
            block: Any = Secret.load(key_secret)
            value = block.get()
        except ValueError as err:
            raise InputError(
                f"no Prefect Secret block named {key_secret!r}: create it with "
                f"`Secret(value=...).save({key_secret!r})` or set RENALFLOW_PSEUDONYM_KEY"
            ) from err
        return check_key(str(value))
    raise InputError(NO_KEY_HELP)


def _report(
    summary: ScoreSummary,
    archive: str,
    store: str,
    scored: tuple[pd.DataFrame, list[StudySelection], pa.Table, bytes] | None,
    pacs: PacsSettings | None,
) -> None:
    """Results back to the PACS the archive is: an SR per study `scored` (its slices,
    selections, vote rows and key), and those an earlier run left unsent."""
    from renalflow.flows.pacs import report_to_source
    from renalflow.tasks.sources.report import study_results

    results = study_results(*scored) if scored else []
    sent, failed = report_to_source(archive, store, results, pacs or PacsSettings())
    summary.reports_sent = sent
    summary.reports_not_sent = failed


@task(name="score-slices", **TASK_OPTIONS)
def score_task(
    store: str,
    parts: Opaque[dict[str, list[str]]],
    model_dir: str,
    model_version: str,
    batch_size: int,
    cpu_threads: int | None = None,
    selector: SelectorRef | None = None,
) -> ScoredBatch:
    return score_slices(
        store, parts.value, model_dir, model_version, batch_size, cpu_threads, selector
    )


@task(name="explain-slices", cache_policy=NO_CACHE)
def explain_task(
    store: str,
    parts: Opaque[dict[str, list[str]]],
    model_dir: str,
    model_version: str,
    targets: Opaque[dict[str, str]],
    outputs: Opaque[dict[str, tuple[str, str]]],
    cpu_threads: int | None = None,
) -> dict[str, str]:
    return explain_slices(
        store, parts.value, model_dir, model_version, targets.value, outputs.value, cpu_threads
    )


@flow(name="score", log_prints=True)
def score_flow(
    archive: str,
    model_dir: str,
    results: str,
    store: str | None = None,
    cohort: str = SCREENING,
    config: ScoreConfig | None = None,
    key_secret: str | None = None,
    gpu: bool = False,
    ingest_batch_size: int = 512,
    explain_dir: str | None = None,
    selector_dir: str | None = None,
    pacs: PacsSettings | None = None,
    report_to_pacs: bool = False,
) -> ScoreSummary:
    """Score every study of `archive` that this model version has not scored yet.

    New files are converted into the slice store first (with the preprocessing the model
    was trained on). Series and slices are selected (tasks.selection: annotations, else
    the slice selector at `selector_dir`, else every slice with config.all_slices);
    per-image probabilities go to R/slice_scores, one 51% vote per study to
    R/study_votes and per patient to R/patient_votes, pseudonymised with the
    department's key. With `report_to_pacs` (a PACS archive), each study scored gets a
    DICOM SR sent back to that PACS (flows/pacs.py), and SRs an earlier run could not
    send are sent again.
    """
    announce_run("score")
    logger = get_run_logger()
    started = time.perf_counter()
    config = config or ScoreConfig()
    if report_to_pacs and not is_pacs(archive):
        raise InputError(f"--report-to-pacs needs a PACS archive; {archive} is not one")
    key = resolve_key(key_secret)  # refuse before any work without a key
    info = read_model_info(model_dir)
    selector = None
    if selector_dir:
        selector = load_selector(selector_dir, info)
    # The default store holds one preprocessing; another model's slices go beside it.
    store = store or store_for(default_store(results), info.preprocess.version)
    run_id = str(flow_run.get_id() or "local")
    summary = ScoreSummary(archive, results, store, info.model_version, run_id)
    summary.key_id = key_id(key)

    ingest = run_ingest(
        archive, store, None, cohort, info.preprocess, ingest_batch_size, run_id, pacs=pacs
    )
    summary.files_new = ingest.files_new
    summary.source = ingest.source

    ensure_tables(results, key)  # a table of another key is refused before any work
    plan = plan_scoring(
        read_inventory(store, archive_folder(archive, store), info.preprocess.version),
        scored_studies(results, info.model_version),
        key,
    )
    summary.add_plan(plan)
    logger.info(
        "%d studies in %s: %d already scored by model %s, %d to score (%d images)",
        plan.studies_in_archive,
        archive,
        plan.already_scored,
        info.model_version,
        plan.studies,
        len(plan.slices),
    )
    if plan.studies == 0:
        if report_to_pacs:  # SRs an earlier run left unsent
            _report(summary, archive, store, None, pacs)
        summary.seconds = time.perf_counter() - started
        return summary
    chosen = plan_selection(plan.slices, config, selector=selector is not None)

    summary.workers = cluster_threads()
    cpu_threads = cores_per_worker_thread()
    work = [(batch, None) for batch in _batches(chosen.direct, summary.workers)]
    work += [(batch, selector) for batch in _batches(chosen.screened, summary.workers)]
    total = len(chosen.direct) + len(chosen.screened)
    inference_started = time.perf_counter()
    annotations = {"resources": {"GPU": 1}} if gpu else {}
    with dask.annotate(**annotations):
        futures = [
            score_task.submit(
                store,
                Opaque(batch_parts(batch)),
                info.model_dir,
                info.model_version,
                config.batch_size,
                cpu_threads,
                through,
            )
            for batch, through in work
        ]
    summary.score_tasks = len(futures)
    probabilities: dict[str, float] = {}
    found_mass: dict[str, float] = {}
    seen = 0
    for done, future in enumerate(while_workers(futures), start=1):
        scored = future.result()
        for uid, p in zip(scored.sop_instance_uid, scored.probability.tolist(), strict=True):
            if p == p:  # NaN: the selector left the slice out
                probabilities[uid] = p
        if scored.selector_probability is not None:
            found_mass.update(
                zip(scored.sop_instance_uid, scored.selector_probability.tolist(), strict=True)
            )
        seen += len(scored.sop_instance_uid)
        summary.busy_seconds += scored.seconds
        elapsed = time.perf_counter() - inference_started
        logger.info(
            "[%d/%d batches] %d/%d images scored, %.0f images/s",
            done,
            len(futures),
            seen,
            total,
            seen / max(elapsed, 1e-9),
        )
    summary.inference_seconds = time.perf_counter() - inference_started
    summary.images_scored = seen
    decisions = (
        {uid: p >= selector.threshold for uid, p in found_mass.items()} if selector else None
    )
    selections = select_slices(
        plan.slices, chosen.series, selector=decisions, all_slices=config.all_slices
    )
    summary.add_selection(selections, chosen.series)

    heatmap_uris: dict[str, str] = {}
    if config.explain:
        out_dir = explain_dir or default_heatmap_dir(results)
        voting = {uid for s in selections for uid in s.selected}
        parts, targets, outputs = plan_explanations(
            plan.slices[plan.slices["sop_instance_uid"].isin(voting)],
            probabilities,
            key,
            config,
            out_dir,
        )
        with dask.annotate(**annotations):
            explained = [
                explain_task.submit(
                    store,
                    Opaque({part: uids}),
                    info.model_dir,
                    info.model_version,
                    Opaque({u: targets[u] for u in uids}),
                    Opaque({u: outputs[u] for u in uids}),
                    cpu_threads,
                )
                for part, uids in parts.items()
            ]
        for explained_future in while_workers(explained):
            heatmap_uris.update(explained_future.result())
        summary.heatmaps = len(heatmap_uris)
        summary.heatmap_dir = out_dir
        logger.info("%d heat maps of deciding slices in %s", len(heatmap_uris), out_dir)
    slice_rows, vote_rows = result_rows(
        plan.slices,
        probabilities,
        key,
        info,
        config,
        archive,
        run_id,
        heatmap_uris=heatmap_uris,
        selections=selections,
        series=chosen.series,
        selector_probabilities=found_mass,
        selector=SelectorUsed(selector.model_version, selector.threshold) if selector else None,
        membership=training_membership(model_dir, key),
    )
    written = write_results(results, slice_rows, vote_rows, run_id)
    summary.slice_rows_inserted = written["slice_rows_inserted"]
    summary.vote_rows_inserted = written["vote_rows_inserted"]
    summary.vote_rows_updated = written["vote_rows_updated"]
    summary.patient_rows_written = (
        written["patient_rows_inserted"] + written["patient_rows_updated"]
    )
    summary.votes, summary.qc_flagged = tally_votes(vote_rows)
    if report_to_pacs:
        _report(summary, archive, store, (plan.slices, selections, vote_rows, key), pacs)
    summary.seconds = time.perf_counter() - started
    logger.info(
        "scoring finished: %d studies, %d images in %.1f s",
        summary.studies_scored,
        summary.images_scored,
        summary.seconds,
    )
    return summary
