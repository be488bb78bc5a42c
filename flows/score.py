"""The score flow: screen an archive with a trained model into the results table R.

Incremental: files already in the slice store are not converted again, and studies this
model version has already voted on are not scored again, so a nightly run over an
archive that grew by 50 studies does the work of 50 studies.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import dask
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect_dask import DaskTaskRunner

from renalflow.flows.fanout import TASK_OPTIONS, Opaque, announce_run, balanced, cluster_threads
from renalflow.flows.ingest import run_ingest
from renalflow.tasks.config import SCREENING
from renalflow.tasks.errors import InputError
from renalflow.tasks.model_dir import read_model_info
from renalflow.tasks.pseudonym import NO_KEY_HELP, check_key, key_from_env, key_id
from renalflow.tasks.results import (
    PATIENT_VOTES,
    SLICE_SCORES,
    ensure_tables,
    merge_rows,
    scored_studies,
)
from renalflow.tasks.score import (
    ScoreConfig,
    ScoredBatch,
    explain_slices,
    inventory,
    plan_explanations,
    plan_scoring,
    result_rows,
    score_batches,
    score_slices,
)


def resolve_key(key_secret: str | None = None) -> bytes:
    """The pseudonymisation key: RENALFLOW_PSEUDONYM_KEY, else the named Prefect Secret
    block. Never a flow parameter, so it never reaches Prefect's database or logs."""
    from_env = key_from_env()
    if from_env is not None:
        return from_env
    if key_secret:
        from prefect.blocks.system import Secret

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


@task(name="score-slices", **TASK_OPTIONS)
def score_task(
    store: str,
    parts: Opaque[dict[str, list[str]]],
    model_dir: str,
    model_version: str,
    batch_size: int,
    cpu_threads: int | None = None,
) -> ScoredBatch:
    return score_slices(store, parts.value, model_dir, model_version, batch_size, cpu_threads)


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


@dataclass
class ScoreSummary:
    """What a scoring run did."""

    archive: str
    results: str
    store: str
    model_version: str
    run_id: str
    files_new: int = 0
    studies_in_archive: int = 0
    already_scored: int = 0
    rescored: int = 0
    studies_scored: int = 0
    images_scored: int = 0
    votes: dict[str, int] = field(default_factory=dict)
    qc_flagged: dict[str, int] = field(default_factory=dict)
    slice_rows_inserted: int = 0
    vote_rows_inserted: int = 0
    vote_rows_updated: int = 0
    seconds: float = 0.0
    inference_seconds: float = 0.0
    busy_seconds: float = 0.0
    workers: int = 0
    score_tasks: int = 0
    key_id: str = ""
    heatmaps: int = 0
    heatmap_dir: str = ""


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
) -> ScoreSummary:
    """Score every study of `archive` that this model version has not scored yet.

    New files are converted into the slice store first (with the preprocessing the model
    was trained on); per-image probabilities go to R/slice_scores and one 51% vote per
    study to R/patient_votes, pseudonymised with the department's key.
    """
    announce_run("score")
    logger = get_run_logger()
    started = time.perf_counter()
    config = config or ScoreConfig()
    key = resolve_key(key_secret)  # refuse before any work without a key
    info = read_model_info(model_dir)
    store = store or default_store(results)
    run_id = str(flow_run.get_id() or "local")
    summary = ScoreSummary(archive, results, store, info.model_version, run_id)
    summary.key_id = key_id(key)

    ingest = run_ingest(archive, store, None, cohort, info.preprocess, ingest_batch_size, run_id)
    summary.files_new = ingest.files_new

    ensure_tables(results)
    plan = plan_scoring(
        inventory(store, archive, info.preprocess.version),
        scored_studies(results, info.model_version),
        key,
    )
    summary.studies_in_archive = plan.studies_in_archive
    summary.already_scored = plan.already_scored
    summary.rescored = plan.rescored
    summary.studies_scored = plan.studies
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
        summary.seconds = time.perf_counter() - started
        return summary

    threads = cluster_threads()
    summary.workers = threads
    cpu_threads = _cores_per_worker_thread()
    target = balanced(len(plan.slices), threads * 2, 64, 2048)
    batches = score_batches(plan.slices, target)
    inference_started = time.perf_counter()
    annotations = {"resources": {"GPU": 1}} if gpu else {}
    with dask.annotate(**annotations):
        futures = [
            score_task.submit(
                store,
                Opaque(
                    {
                        str(part): group["sop_instance_uid"].tolist()
                        for part, group in batch.groupby("part")
                    }
                ),
                info.model_dir,
                info.model_version,
                config.batch_size,
                cpu_threads,
            )
            for batch in batches
        ]
    summary.score_tasks = len(futures)
    probabilities: dict[str, float] = {}
    for done, future in enumerate(as_completed(futures), start=1):
        scored = future.result()
        probabilities.update(zip(scored.sop_instance_uid, scored.probability.tolist(), strict=True))
        summary.busy_seconds += scored.seconds
        elapsed = time.perf_counter() - inference_started
        logger.info(
            "[%d/%d batches] %d/%d images scored, %.0f images/s",
            done,
            len(futures),
            len(probabilities),
            len(plan.slices),
            len(probabilities) / max(elapsed, 1e-9),
        )
    summary.inference_seconds = time.perf_counter() - inference_started
    summary.images_scored = len(probabilities)

    heatmap_uris: dict[str, str] = {}
    if config.explain:
        out_dir = explain_dir or results.rstrip("/") + ".heatmaps"
        parts, targets, outputs = plan_explanations(
            plan.slices, probabilities, key, config, out_dir
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
        for explained_future in as_completed(explained):
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
    )
    # Image scores first, then votes: a vote in R always has its image scores.
    written = merge_rows(results, SLICE_SCORES, slice_rows, run_id=run_id)
    summary.slice_rows_inserted = written["inserted"]
    written = merge_rows(
        results,
        PATIENT_VOTES,
        vote_rows,
        replace_when="t.n_images <> s.n_images",
        run_id=run_id,
    )
    summary.vote_rows_inserted = written["inserted"]
    summary.vote_rows_updated = written["updated"]
    votes = vote_rows.column("vote").to_pylist()
    summary.votes = {v: votes.count(v) for v in sorted(set(votes))}
    for flags in vote_rows.column("qc_flags").to_pylist():
        for flag in filter(None, flags.split(",")):
            summary.qc_flagged[flag] = summary.qc_flagged.get(flag, 0) + 1
    summary.seconds = time.perf_counter() - started
    logger.info(
        "scoring finished: %d studies, %d images in %.1f s",
        summary.studies_scored,
        summary.images_scored,
        summary.seconds,
    )
    return summary


def _cores_per_worker_thread() -> int | None:
    """When the workers run on this machine, its cores shared out among their threads
    (TensorFlow would otherwise give every worker process every core); for workers on
    other machines, no limit."""
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if not isinstance(runner, DaskTaskRunner):
        return None
    workers = runner.client.scheduler_info(n_workers=-1).get("workers", {})
    local = [w for w in workers.values() if str(w.get("host", "")).startswith("127.")]
    if not local or len(local) != len(workers):
        return None
    threads = sum(int(w.get("nthreads", 1)) for w in local)
    return max(1, (os.cpu_count() or 1) // max(1, threads))


def default_store(results: str) -> str:
    """The slice store beside R (`R.slices`): it holds identifiers and pixels, so it
    stays inside the department, unlike R."""
    return results.rstrip("/") + ".slices"


def summary_dict(summary: ScoreSummary) -> dict[str, Any]:
    return asdict(summary)


def format_summary(summary: ScoreSummary) -> str:
    lines = [
        f"score run {summary.run_id}  (model_version {summary.model_version}, "
        f"key id {summary.key_id})",
        f"  archive            {summary.archive}",
        f"  slice store        {summary.store}",
        f"  results            {summary.results}",
        f"  new files          {summary.files_new:>8,}",
        f"  studies in archive {summary.studies_in_archive:>8,}",
        f"  already scored     {summary.already_scored:>8,}",
        f"  scored now         {summary.studies_scored:>8,}"
        + (f"  ({summary.rescored} rescored: images added)" if summary.rescored else ""),
        f"  images scored      {summary.images_scored:>8,}",
    ]
    for vote, count in summary.votes.items():
        lines.append(f"    vote {vote:<13} {count:>8,}")
    for flag, count in sorted(summary.qc_flagged.items()):
        lines.append(f"    QC {flag:<15} {count:>8,}")
    lines.append(
        f"  rows written       {summary.slice_rows_inserted:,} slice_scores, "
        f"{summary.vote_rows_inserted:,} patient_votes"
        + (f" ({summary.vote_rows_updated} updated)" if summary.vote_rows_updated else "")
    )
    if summary.heatmaps:
        lines.append(f"  heat maps          {summary.heatmaps:>8,}  in {summary.heatmap_dir}")
    lines.append(f"  wall time          {summary.seconds:>8.1f} s")
    if summary.inference_seconds and summary.workers:
        rate = summary.images_scored / summary.inference_seconds
        lines.append(
            f"  inference          {summary.inference_seconds:>8.1f} s  ({rate:,.0f} images/s, "
            f"{rate / summary.workers:,.0f} per worker thread, {summary.score_tasks} tasks)"
        )
    return "\n".join(lines)
