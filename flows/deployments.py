"""Prefect deployments: ingest, train and score as jobs a Prefect server can schedule.

Each job is a small flow with plain, typed parameters (what the Prefect UI shows in its
run form) that starts the real flow on a Dask cluster. `renalflow serve` registers the
three and serves them from one process; infra/prefect.yaml declares the same jobs for
`prefect deploy` with a work pool.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow

from renalflow.flows.runtime import dask_task_runner, load_s3_credentials

NIGHTLY_CRON = "0 2 * * *"


@flow(name="renalflow-ingest", log_prints=True)
def ingest_job(
    archive: str,
    store: str,
    labels: str | None = None,
    cohort: str = "development",
    workers: int | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Convert new DICOM files of an archive into the slice store (paper preprocessing)."""
    from renalflow.flows.ingest import format_summary, ingest_flow, summary_dict

    load_s3_credentials()
    runner = dask_task_runner(workers, dask_address)
    summary = ingest_flow.with_options(task_runner=runner)(  # type: ignore[arg-type]
        archive=archive, store=store, labels=labels, cohort=cohort
    )
    print(format_summary(summary))
    return summary_dict(summary)


@flow(name="renalflow-train", log_prints=True)
def train_job(
    store: str,
    model_dir: str,
    profile: str = "paper",
    epochs: int | None = None,
    weights: str | None = None,
    select_epoch: int | None = None,
    decay_after: int | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Train the classifier (on a GPU worker of `dask_address` when it has one)."""
    from dataclasses import asdict

    from renalflow.flows.train import gpu_workers, train_flow
    from renalflow.tasks.model import profile_config

    load_s3_credentials()
    config = profile_config(
        profile,
        epochs=epochs,
        weights=weights,
        select_epoch=select_epoch,
        decay_after=decay_after,
    )
    gpu = bool(dask_address and gpu_workers(dask_address))
    flow_ = train_flow
    if gpu:
        flow_ = train_flow.with_options(task_runner=dask_task_runner(address=dask_address))  # type: ignore[arg-type]
    result = flow_(store=store, model_dir=model_dir, config=config, gpu=gpu)
    return asdict(result)


@flow(name="renalflow-score", log_prints=True)
def score_job(
    archive: str,
    model_dir: str,
    results: str,
    store: str | None = None,
    cohort: str = "screening",
    vote_threshold: float = 0.51,
    image_threshold: float = 0.5,
    min_images: int = 10,
    key_secret: str | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Score the archive's studies this model has not scored yet into the results table.

    The pseudonymisation key comes from RENALFLOW_PSEUDONYM_KEY in the serving process's
    environment or from the Prefect Secret block named by `key_secret`, never from a
    parameter (parameters are stored in Prefect's database).
    """
    from renalflow.flows.score import format_summary, score_flow, summary_dict
    from renalflow.flows.train import gpu_workers
    from renalflow.tasks.score import ScoreConfig

    load_s3_credentials()
    config = ScoreConfig(
        image_threshold=image_threshold, vote_threshold=vote_threshold, min_images=min_images
    )
    gpu = bool(dask_address and gpu_workers(dask_address))
    runner = dask_task_runner(workers, dask_address)
    summary = score_flow.with_options(task_runner=runner)(  # type: ignore[arg-type]
        archive=archive,
        model_dir=model_dir,
        results=results,
        store=store,
        cohort=cohort,
        config=config,
        key_secret=key_secret,
        gpu=gpu,
    )
    print(format_summary(summary))
    return summary_dict(summary)


def local_timezone() -> str:
    """The machine's IANA time zone name (TZ, then /etc/localtime), else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if "/" in name or name == "UTC":
        return name
    try:
        target = os.path.realpath("/etc/localtime")
        marker = "zoneinfo/"
        if marker in target:
            return target.split(marker, 1)[1]
    except OSError:
        pass
    timezone_file = Path("/etc/timezone")
    if timezone_file.exists():
        return timezone_file.read_text().strip() or "UTC"
    return "UTC"


def build_deployments(
    archive: str,
    model_dir: str,
    results: str,
    store: str | None = None,
    cron: str = NIGHTLY_CRON,
    timezone: str | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    key_secret: str | None = None,
) -> list[Any]:
    """The three deployments; nightly scoring of `archive` runs on `cron` (02:00 local)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    cluster = {"workers": workers, "dask_address": dask_address}
    common: dict[str, Any] = {"entrypoint_type": EntrypointType.MODULE_PATH, "tags": ["renalflow"]}
    score = score_job.to_deployment(
        name="nightly",
        schedules=[Cron(cron, timezone=timezone or local_timezone())],
        parameters={
            "archive": archive,
            "model_dir": model_dir,
            "results": results,
            "store": store,
            "key_secret": key_secret,
            **cluster,
        },
        description=f"Score new studies of {archive} into {results} every night.",
        # One scoring run at a time; a run due while another is still going waits.
        concurrency_limit=1,
        **common,
    )
    ingest = ingest_job.to_deployment(
        name="on-demand",
        parameters={"archive": archive, "store": store or results.rstrip("/") + ".slices"},
        description="Convert new files of an archive into a slice store.",
        **common,
    )
    train = train_job.to_deployment(
        name="on-demand",
        parameters={"model_dir": model_dir, "dask_address": dask_address},
        description="Train the classifier on a slice store (GPU worker when available).",
        **common,
    )
    return [score, ingest, train]
