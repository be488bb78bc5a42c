"""Prefect deployments of the jobs in `renalflow.flows.jobs` (ingest, train, score,
pipeline).

The jobs take their parameter models (the Prefect UI renders them as run forms), so a
deployment offers exactly the options the CLI has. `renalflow serve` registers the
three and serves them from one process; infra/prefect.yaml declares the same jobs for
`prefect deploy` with a work pool (a test checks it against the models).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from renalflow.flows.jobs import ingest_job, pipeline_job, score_job, train_job
from renalflow.flows.score import default_store
from renalflow.tasks.params import (
    NIGHTLY_CRON,
    IngestParams,
    ScoreParams,
    ScreeningParams,
    ServeParams,
)

__all__ = ["NIGHTLY_CRON", "build_deployments", "local_timezone"]


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


def build_deployments(params: ServeParams) -> list[Any]:
    """The three deployments of the jobs; nightly scoring of the archive runs on
    `params.cron` in `params.timezone` (this machine's by default)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    cluster = {"workers": params.workers, "dask_address": params.dask_address}
    store = params.store or default_store(params.results)
    common: dict[str, Any] = {"entrypoint_type": EntrypointType.MODULE_PATH, "tags": ["renalflow"]}
    score = ScoreParams(**params.model_dump(include=set(ScreeningParams.model_fields)), **cluster)
    ingest = IngestParams(archive=params.archive, store=store, **cluster)
    return [
        score_job.to_deployment(
            name="nightly",
            schedules=[Cron(params.cron, timezone=params.timezone or local_timezone())],
            parameters={"params": score.model_dump(mode="json")},
            description=f"Score new studies of {params.archive} into {params.results} every night.",
            # One scoring run at a time; a run due while another is still going waits.
            concurrency_limit=1,
            **common,
        ),
        ingest_job.to_deployment(
            name="on-demand",
            parameters={"params": ingest.model_dump(mode="json")},
            description="Convert new files of an archive into a slice store.",
            **common,
        ),
        # Training needs a store of labelled development slices, which serving does not
        # know: the run form asks for it (the model directory is prefilled).
        train_job.to_deployment(
            name="on-demand",
            parameters={
                "params": {"model_dir": params.model_dir, "dask_address": params.dask_address}
            },
            description="Train the classifier on a slice store (GPU worker when available).",
            **common,
        ),
        # The pipeline needs the labels and a folder for model directories, which serving
        # does not know: the run form asks for them.
        pipeline_job.to_deployment(
            name="on-demand",
            parameters={
                "params": {
                    "archive": params.archive,
                    "store": store,
                    "results": params.results,
                    "dask_address": params.dask_address,
                }
            },
            description="Ingest, train, compare with production on the same held-out "
            "patients, register and promote through the gate.",
            **common,
        ),
    ]
