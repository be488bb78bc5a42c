"""Ingest from an S3 archive into an S3 store, through a real S3-protocol server on loopback."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.ingest import ingest_flow
from tasks.store import REJECTS, SLICES, read_table
from tasks.synth import SynthConfig, synthesize_archive


@pytest.fixture(scope="module")
def s3(prefect_api) -> Iterator[object]:
    """moto's standalone server on 127.0.0.1; s3fs (and Dask workers) find it via env."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "renalflow-test",
        "AWS_SECRET_ACCESS_KEY": "renalflow-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    previous = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    try:
        yield fs
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def test_ingest_from_s3_archive_into_s3_store(s3, tmp_path: Path):
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    synthesize_archive(tmp_path, SynthConfig(patients=2, seed=4, max_slices_per_series=3), jobs=1)
    (tmp_path / "archive" / "notes.txt").write_text("not an image")
    s3.mkdir("hospital-pacs")
    s3.put(str(tmp_path / "archive") + "/", "hospital-pacs/export/", recursive=True)
    s3.put(str(tmp_path / "labels.csv"), "hospital-pacs/labels.csv")
    n_files = len(s3.find("hospital-pacs/export"))
    store = "s3://hospital-pacs/renalflow/store"
    # Workers started now inherit the S3 endpoint from the environment.
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        flow = ingest_flow.with_options(task_runner=runner)
        summary = flow(
            archive="s3://hospital-pacs/export",
            store=store,
            labels="s3://hospital-pacs/labels.csv",
        )
        assert summary.files_found == n_files and summary.rejects == {"not_dicom": 1}
        slices = read_table(store, SLICES, ["source_uri", "label"]).to_pylist()
        rejects = read_table(store, REJECTS, ["source_uri"]).column("source_uri").to_pylist()
        counts = Counter([r["source_uri"] for r in slices] + rejects)
        assert len(counts) == n_files and max(counts.values()) == 1
        assert all(u.startswith("s3://hospital-pacs/export/") for u in counts)
        assert {r["label"] for r in slices} <= {"benign", "malignant"}
        again = flow(archive="s3://hospital-pacs/export", store=store)
        assert again.files_new == 0
    assert not [p for p in s3.find("hospital-pacs/renalflow/store") if "_staging" in p]
