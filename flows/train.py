"""Train and evaluate flows: launch training on a GPU Dask worker when there is one."""

from __future__ import annotations

from typing import Any

import dask
from distributed import Client
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from renalflow.tasks.config import Device, Task
from renalflow.tasks.devices import gpu_devices, require_gpu
from renalflow.tasks.errors import InputError
from renalflow.tasks.evaluate import evaluate
from renalflow.tasks.model import TrainConfig
from renalflow.tasks.selector import SelectorTraining
from renalflow.tasks.split import SplitConfig
from renalflow.tasks.train import TrainResult, train_model


@task(name="train-model", cache_policy=NO_CACHE)
def train_task(
    store: str,
    model_dir: str,
    config: TrainConfig,
    split: SplitConfig,
    task: Task = Task.CLASSIFIER,
    selector: SelectorTraining | None = None,
    device: Device = Device.AUTO,
) -> TrainResult:
    logger = get_run_logger()
    if Device(device) is Device.GPU:
        # Where the task landed, not where it was sent from: a worker that advertises
        # GPU=1 but sees no GPU (driver, CPU-only wheel) fails here, never trains on its CPU.
        logger.info(f"training on {', '.join(require_gpu('the training process'))}")
    return train_model(
        store, model_dir, config, split, log=logger.info, task=task, selector=selector
    )


@task(name="evaluate-model", cache_policy=NO_CACHE)
def evaluate_task(
    store: str, model_dir: str, report: str, options: dict[str, Any]
) -> dict[str, Any]:
    return evaluate(store, model_dir, report, **options)


def place_training(
    device: Device, dask_address: str | None, log: Any = print
) -> tuple[str | None, bool]:
    """Where training runs for `device`: (the Dask scheduler to send it to, or None for
    this process; whether it needs a GPU worker). `gpu` with no GPU worker and no GPU
    here is refused in one line, at once: there is no silent fall back to the CPU."""
    device = Device(device)
    if device is Device.CPU:
        return None, False
    found = gpu_workers(dask_address) if dask_address else []
    if found:
        log(f"training on GPU worker(s) {', '.join(found)}")
        return dask_address, True
    if device is Device.GPU:
        if dask_address:
            raise InputError(
                f"--device gpu: the Dask cluster at {dask_address} has no worker with a GPU "
                f"resource; start one on a GPU node with `dask worker {dask_address} "
                "--resources GPU=1`, or pass --device cpu"
            )
        log(f"training on this machine's {', '.join(require_gpu('this machine'))}")
        return None, False
    where = "this process" + (
        "" if not dask_address else f" (no worker of {dask_address} has GPU=1)"
    )
    log(f"no GPU worker: training in {where}; --device gpu refuses to run without one")
    return None, False


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
    selector: SelectorTraining | None = None,
    device: Device = Device.AUTO,
) -> TrainResult:
    """Train the classifier or the slice selector (`task`). With `gpu`, the task is
    annotated to need a Dask worker started with `--resources GPU=1`, so the scheduler
    places it there; with `device` gpu, the training process checks it sees a GPU."""
    config = config or TrainConfig()
    split = split or SplitConfig(seed=config.seed)
    args = (store, model_dir, config, split, task, selector, device)
    if gpu:
        with dask.annotate(resources={"GPU": 1}):
            future = train_task.submit(*args)
        result = future.result()
    else:
        result = train_task(*args)
    if gpu and not gpu_devices(_recorded_environment(result.model_dir)):
        get_run_logger().warning(
            "the GPU worker trained without a GPU device (see its environment.json and "
            "`renalflow doctor` there); --device gpu refuses that"
        )
    return result


def _recorded_environment(model_dir: str) -> dict[str, Any]:
    import json

    from renalflow.tasks.model_dir import ModelDir

    return dict(json.loads(ModelDir(model_dir).environment.read_text()))


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    store: str, model_dir: str, report: str, options: dict[str, Any]
) -> dict[str, Any]:
    return evaluate_task(store, model_dir, report, options)
