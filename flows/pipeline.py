"""The pipeline flow: ingest the new files, train (on a GPU worker when there is one),
evaluate on the held-out test patients, compare with production on the same patients,
register, and promote through the gate (tasks/registry.py states its rule)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from renalflow.tasks.config import Device, Gate, GateMetric, Split, Task
from renalflow.tasks.model import TrainConfig
from renalflow.tasks.split import SplitConfig

EVALUATION = "evaluation"
"""The new model's report on its test split, inside its model directory."""
COMPARISON = "evaluation-of-production"
"""Production's report on the same test patients, inside the new model's directory."""


@dataclass
class PipelineSummary:
    model_version: str
    model_dir: str
    production_before: str | None
    production_after: str | None
    promoted: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    production_metrics: dict[str, Any] | None = None


def _run_name() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


@task(name="evaluate-for-registry", cache_policy=NO_CACHE)
def evaluate_for_registry(
    store: str, model_dir: str, report: str, split_from: str, n_bootstrap: int, seed: int
) -> dict[str, Any]:
    from renalflow.tasks.evaluate import evaluate

    return evaluate(
        store,
        model_dir,
        report,
        split=Split.TEST.value,
        n_bootstrap=n_bootstrap,
        seed=seed,
        split_from=split_from,
    )


def prepare_split(labels_csv: str, model_dir: Path, production_dir: str | None, seed: int) -> None:
    """Carry production's patient split into the new model directory, new patients added
    (tasks.split.extend_split): both models are then compared on test patients neither
    trained on."""
    from renalflow.tasks.ingest import read_labels
    from renalflow.tasks.model_dir import ModelDir
    from renalflow.tasks.split import extend_split, load_split, save_split

    labels = read_labels(labels_csv)
    config = SplitConfig(seed=seed)
    existing: dict[str, str] = {}
    if production_dir and ModelDir(production_dir).split.exists():
        existing = load_split(ModelDir(production_dir).split)
        config = SplitConfig(**json.loads(ModelDir(production_dir).split.read_text())["config"])
    else:
        from renalflow.tasks.split import split_patients

        existing = split_patients(labels, config)
    assignment = extend_split(existing, labels, config)
    model_dir.mkdir(parents=True, exist_ok=True)
    known = {p: labels.get(p, "unknown") for p in assignment}
    save_split(assignment, known, config, ModelDir(model_dir).split)


@flow(name="pipeline", log_prints=True)
def pipeline_flow(
    archive: str,
    store: str,
    labels: str,
    results: str,
    models_dir: str,
    config: TrainConfig,
    ingest: dict[str, Any],
    device: Device = Device.AUTO,
    dask_address: str | None = None,
    workers: int | None = None,
    gate: Gate = Gate.AUTO,
    gate_metric: GateMetric = GateMetric.AUC,
    gate_margin: float = 0.0,
    n_bootstrap: int = 1000,
) -> PipelineSummary:
    """One pass of the chain; `ingest` holds ingest_flow's other arguments (lesions,
    preprocess, batch_size)."""
    from renalflow.flows.ingest import ingest_flow
    from renalflow.flows.runtime import dask_task_runner
    from renalflow.flows.train import place_training, train_flow
    from renalflow.tasks import registry
    from renalflow.tasks.model_dir import read_model_info
    from renalflow.tasks.store import store_for

    logger = get_run_logger()
    run_id = str(flow_run.get_id() or "local")
    runner = dask_task_runner(workers, dask_address)
    made_with = ingest["preprocess"].version
    store = store_for(store, made_with)  # another preprocessing: a store of its own
    ingest_flow.with_options(task_runner=runner)(  # type: ignore[arg-type]
        archive=archive, store=store, labels=labels, **ingest
    )

    before = registry.alias_version(results)
    production = registry.registered(results, before) if before else None
    model_dir = Path(models_dir) / _run_name()
    prepare_split(labels, model_dir, production.model_dir if production else None, config.seed)

    address, gpu = place_training(device, dask_address, logger.info)
    train = train_flow
    if address:
        train = train_flow.with_options(task_runner=dask_task_runner(address=address))  # type: ignore[arg-type]
    result = train(
        store=store,
        model_dir=str(model_dir),
        config=config,
        split=SplitConfig(seed=config.seed),
        gpu=gpu,
        task=Task.CLASSIFIER,
        device=device,
    )
    metrics = evaluate_for_registry(
        store, str(model_dir), str(model_dir / EVALUATION), str(model_dir), n_bootstrap, config.seed
    )
    candidate = registry.register_model(results, str(model_dir), metrics, run_id)
    production_metrics = None
    production_figure = None
    if production is not None:
        # Production sees the test patients' slices made its own way: a store of its
        # preprocessing, made now from the same archive when there is none yet.
        preprocess = read_model_info(production.model_dir).preprocess
        production_store = store_for(store, preprocess.version)
        if production_store != store:
            logger.info(f"production reads slices made its own way: {production_store}")
            ingest_flow.with_options(task_runner=runner)(  # type: ignore[arg-type]
                archive=archive,
                store=production_store,
                labels=labels,
                **{**ingest, "preprocess": preprocess},
            )
        production_metrics = evaluate_for_registry(
            production_store,
            production.model_dir,
            str(model_dir / COMPARISON),
            str(model_dir),
            n_bootstrap,
            config.seed,
        )
        production_figure = _figure(production_metrics, gate_metric)
    decision = registry.gate_decision(
        candidate.metric(gate_metric), production_figure, gate_metric, gate_margin, before
    )
    promoted = False
    reason = decision.reason
    if candidate.model_version == before:
        reason = f"{candidate.model_version} is already production"
    elif decision.promote and Gate(gate) is Gate.AUTO:
        registry.promote(results, candidate.model_version, f"gate: {reason}", run_id=run_id)
        promoted = True
    elif decision.promote:
        reason = (
            f"passes the gate ({reason}); --gate manual: promote it with `renalflow models "
            f"promote {candidate.model_version} --results {results}`"
        )
    verdict = "promoted to production" if promoted else "registered, not promoted"
    logger.info(f"model {result.model_version}: {verdict} ({reason})")
    return PipelineSummary(
        model_version=candidate.model_version,
        model_dir=str(model_dir),
        production_before=before,
        production_after=registry.alias_version(results),
        promoted=promoted,
        reason=reason,
        metrics=metrics,
        production_metrics=production_metrics,
    )


def _figure(metrics: dict[str, Any], metric: GateMetric) -> float | None:
    value = metrics["image"]["auc"] if metric is GateMetric.AUC else metrics["patient"]["accuracy"]
    return None if value is None else float(value)


def summary_dict(summary: PipelineSummary) -> dict[str, Any]:
    return asdict(summary)


def format_summary(summary: PipelineSummary) -> str:
    verdict = "promoted to production" if summary.promoted else "registered, not promoted"
    return (
        f"model {summary.model_version} ({summary.model_dir}): {verdict}\n"
        f"  gate: {summary.reason}\n"
        f"  production: {summary.production_before or 'none'} -> "
        f"{summary.production_after or 'none'}"
    )
