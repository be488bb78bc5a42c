"""Train and evaluate through the Prefect engine; the GPU path on a real Dask worker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from renalflow.flows.train import evaluate_flow, gpu_workers, train_flow
from renalflow.tasks.model import profile_config
from tests.factory import build_store


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> str:
    return build_store(tmp_path_factory.mktemp("train-flow"), patients=10, seed=8)


def test_train_flow_runs_locally_and_evaluate_flow_reports(prefect_api, small_store, tmp_path):
    config = profile_config("cpu-demo", input_size=64, epochs=2)
    result = train_flow(store=small_store, model_dir=str(tmp_path / "model"), config=config)
    assert (tmp_path / "model" / "model.keras").exists() and result.selected_epoch in (1, 2)
    metrics = evaluate_flow(
        store=small_store,
        model_dir=str(tmp_path / "model"),
        report=str(tmp_path / "report"),
        options={"split": "test", "n_bootstrap": 20},
    )
    assert metrics["model_version"] == result.model_version
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["patient"]["n"] >= 2


def test_training_is_placed_on_the_gpu_worker(prefect_api, small_store, tmp_path):
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    # Two workers; only the second advertises a GPU, as `dask worker --resources GPU=1`.
    with LocalCluster(
        n_workers=0, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        cluster.scale(1)
        cluster.wait_for_workers(1)
        plain = set(cluster.scheduler_info["workers"])
        gpu_cluster_spec = dict(cluster.new_worker_spec())
        name, spec = next(iter(gpu_cluster_spec.items()))
        spec["options"] = {**spec["options"], "resources": {"GPU": 1}}
        cluster.worker_spec[f"gpu-{name}"] = spec
        cluster.scale(2)
        cluster.wait_for_workers(2)
        gpu = set(gpu_workers(cluster.scheduler_address))
        assert len(gpu) == 1 and not (gpu & plain)
        config = profile_config("cpu-demo", input_size=64, epochs=1)
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        result = train_flow.with_options(task_runner=runner)(
            store=small_store, model_dir=str(tmp_path / "gpu-model"), config=config, gpu=True
        )
        env = json.loads((Path(result.model_dir) / "environment.json").read_text())
        assert env["keras_backend"] == os.environ.get("KERAS_BACKEND", "tensorflow")
        with Client(cluster) as client:
            pids = client.run(os.getpid)
        assert env["pid"] == pids[next(iter(gpu))], "training did not run on the GPU worker"


def test_device_gpu_on_a_cluster_without_a_gpu_worker_is_refused_at_once(dask_cluster, tmp_path):
    from renalflow.flows.train import place_training
    from renalflow.tasks.errors import InputError

    with pytest.raises(InputError, match="has no worker with a GPU resource"):
        place_training("gpu", dask_cluster.scheduler_address)
    assert place_training("cpu", dask_cluster.scheduler_address) == (None, False)
    said = []
    assert place_training("auto", dask_cluster.scheduler_address, said.append) == (None, False)
    assert "no GPU worker" in said[0]  # never silent


def test_a_gpu_worker_that_sees_no_gpu_refuses_device_gpu(prefect_api, small_store, tmp_path):
    """The worker checks the device it got: one that advertises GPU=1 but has no GPU
    (here, a CPU machine) fails the run instead of training on its CPU."""
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from renalflow.tasks.devices import gpu_devices
    from renalflow.tasks.errors import InputError

    if gpu_devices():
        pytest.skip("this machine has a GPU")
    with LocalCluster(
        n_workers=1, processes=True, threads_per_worker=1, dashboard_address=None,
        resources={"GPU": 1},
    ) as cluster:  # fmt: skip
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        config = profile_config("cpu-demo", input_size=64, epochs=1)
        with pytest.raises(InputError, match="the training process sees no GPU"):
            train_flow.with_options(task_runner=runner)(
                store=small_store, model_dir=str(tmp_path / "m"), config=config, gpu=True,
                device="gpu",
            )  # fmt: skip
        assert not (tmp_path / "m").exists()
