"""Train and evaluate flows: launch training on a GPU Dask worker when there is one."""

from __future__ import annotations

from typing import Any

import dask
from distributed import Client
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from renalflow.tasks.config import SELECTOR_SENSITIVITY, Task
from renalflow.tasks.evaluate import evaluate
from renalflow.tasks.model import TrainConfig
from renalflow.tasks.split import SplitConfig
from renalflow.tasks.train import TrainResult, train_model


@task(name="train-model", cache_policy=NO_CACHE)
def train_task(
    store: str,
    model_dir: str,
    config: TrainConfig,
    split: SplitConfig,
    task: Task = Task.CLASSIFIER,
    target_sensitivity: float = SELECTOR_SENSITIVITY,
) -> TrainResult:
    logger = get_run_logger()
    return train_model(
        store, model_dir, config, split, log=logger.info, task=task,
        target_sensitivity=target_sensitivity,
    )  # fmt: skip


@task(name="evaluate-model", cache_policy=NO_CACHE)
def evaluate_task(
    store: str, model_dir: str, report: str, options: dict[str, Any]
) -> dict[str, Any]:
    return evaluate(store, model_dir, report, **options)


def gpu_workers(address: str) -> list[str]:
    """Workers of the Dask cluster at `address` that advertise a GPU resource."""
    with Client(address, timeout="30s") as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    return [w for w, info in workers.items() if info.get("resources", {}).get("GPU", 0) >= 1]


@flow(name="train", log_prints=True)
def train_flow(
    store: str,
    model_dir: str,
    config: TrainConfig | None = None,
    split: SplitConfig | None = None,
    gpu: bool = False,
    task: Task = Task.CLASSIFIER,
    target_sensitivity: float = SELECTOR_SENSITIVITY,
) -> TrainResult:
    """Train the classifier or the slice selector (`task`). With `gpu`, the task is
    annotated to need a Dask worker started with `--resources GPU=1`, so the scheduler
    places it there."""
    config = config or TrainConfig()
    split = split or SplitConfig(seed=config.seed)
    if gpu:
        with dask.annotate(resources={"GPU": 1}):
            future = train_task.submit(store, model_dir, config, split, task, target_sensitivity)
        return future.result()
    return train_task(store, model_dir, config, split, task, target_sensitivity)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    store: str, model_dir: str, report: str, options: dict[str, Any]
) -> dict[str, Any]:
    return evaluate_task(store, model_dir, report, options)
