"""The whole pipeline on object storage: S3 archive -> S3 slice store -> training from
S3 -> scoring into a Delta results table on S3 -> queries, against moto's S3 server."""

from __future__ import annotations

from pathlib import Path

from renalflow.flows.ingest import ingest_flow
from renalflow.flows.score import score_flow
from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.model import profile_config
from renalflow.tasks.pseudonym import KEY_ENV
from renalflow.tasks.query import run_query
from renalflow.tasks.results import history
from renalflow.tasks.score import ScoreConfig
from renalflow.tasks.split import SplitConfig
from renalflow.tasks.synth import SynthConfig, synthesize_archive
from renalflow.tasks.train import train_model


def test_ingest_train_score_and_query_on_s3(s3, tmp_path: Path, monkeypatch):
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    monkeypatch.setenv(KEY_ENV, "renalflow-s3-test-key-0123456789")
    synthesize_archive(
        tmp_path,
        SynthConfig(
            patients=6, seed=41, benign_fraction=0.5, max_slices_per_series=3, lesion_only=True
        ),
        jobs=2,
    )
    s3.mkdir("pacs-export")
    s3.mkdir("research")
    s3.put(str(tmp_path / "archive") + "/", "pacs-export/ct/", recursive=True)
    s3.put(str(tmp_path / "labels.csv"), "pacs-export/labels.csv")
    archive, store = "s3://pacs-export/ct", "s3://research/renalflow/store"
    results = "s3://research/renalflow/results"
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        ingest_flow.with_options(task_runner=runner)(
            archive=archive,
            store=store,
            labels="s3://pacs-export/labels.csv",
            preprocess=PreprocessConfig(output_size=64),
        )
        model = tmp_path / "model"
        trained = train_model(
            store, model, profile_config("cpu-demo", input_size=64, epochs=1), SplitConfig()
        )
        assert trained.model_version
        curated = ScoreConfig(all_slices=True)  # lesion slices only, as in the paper
        first = score_flow.with_options(task_runner=runner)(
            archive=archive, model_dir=str(model), results=results, store=store, config=curated
        )
        assert first.studies_scored == 6 and first.files_new == 0
        again = score_flow.with_options(task_runner=runner)(
            archive=archive, model_dir=str(model), results=results, store=store, config=curated
        )
        assert again.studies_scored == 0 and again.already_scored == 6
    assert s3.exists("research/renalflow/results/study_votes/_delta_log")
    votes = run_query(results, "select count(*) n, count(distinct study_key) k from study_votes")
    assert votes.to_pylist() == [{"n": 6, "k": 6}]
    versions = [h["version"] for h in history(results)]
    assert versions == [1, 0], "the rerun must not commit"
    pinned = run_query(results, "select count(*) from study_votes", 0).column(0)[0].as_py()
    assert pinned == 0
    labelled = run_query(
        results, "select count(*) from study_votes where reference_label is not null"
    ).column(0)[0]
    assert labelled.as_py() == 6


def test_credentials_from_a_prefect_secret_block_are_used_and_never_printed(
    s3, prefect_api, tmp_path: Path, monkeypatch
):
    import os
    import subprocess
    import sys

    from prefect.blocks.system import Secret

    from renalflow.flows.runtime import S3_CREDENTIALS_BLOCK_ENV

    secret = "renalflow-secret-value-never-printed"
    Secret(
        value={
            "aws_access_key_id": "renalflow-block-key",
            "aws_secret_access_key": secret,
            "endpoint_url": os.environ["AWS_ENDPOINT_URL"],
            "region": "us-east-1",
        }
    ).save("renalflow-s3-test", overwrite=True)
    synthesize_archive(
        tmp_path,
        SynthConfig(patients=1, seed=43, max_slices_per_series=2, lesion_only=True),
        jobs=1,
    )
    s3.mkdir("block-test")
    s3.put(str(tmp_path / "archive") + "/", "block-test/ct/", recursive=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
    }
    env[S3_CREDENTIALS_BLOCK_ENV] = "renalflow-s3-test"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "renalflow.flows.cli", "ingest", "s3://block-test/ct"),
            *("--store", "s3://block-test/store", "--workers", "1"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "slices written" in out and secret not in out
    assert s3.ls("block-test/store/slices")
