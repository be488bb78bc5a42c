"""Ingest from an S3 archive into an S3 store, through a real S3-protocol server on loopback."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from renalflow.flows.ingest import ingest_flow
from renalflow.tasks.store import REJECTS, SLICES, read_table
from renalflow.tasks.synth import SynthConfig, synthesize_archive


def test_ingest_from_s3_archive_into_s3_store(s3, tmp_path: Path):
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    synthesize_archive(
        tmp_path, SynthConfig(patients=2, seed=4, max_slices_per_series=3, lesion_only=True), jobs=1
    )
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
