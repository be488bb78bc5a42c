"""One ingest run without the engine: the plan against the store, the summary's accounting."""

from __future__ import annotations

from pathlib import Path

import pytest

from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.dicom import RejectReason
from renalflow.tasks.errors import StoreError
from renalflow.tasks.ingest import BatchReport, Reject, commit_batch, convert_files
from renalflow.tasks.ingest_run import IngestSummary, format_summary, plan_ingest, summary_dict
from tests.factory import make_ct, save


def _archive(tmp_path: Path) -> Path:
    archive = tmp_path / "archive"
    save(make_ct(), archive / "a" / "one.dcm")
    (archive / "a" / "junk.bin").write_bytes(b"\x00" * 64)
    return archive


def test_plan_lists_only_files_the_store_does_not_hold(tmp_path: Path):
    archive = _archive(tmp_path)
    store = str(tmp_path / "store")
    config = PreprocessConfig(output_size=16)
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\nP1,benign\nP9,malignant\n")
    plan = plan_ingest(str(archive), store, str(labels), config)
    assert plan.files_found == 2 and plan.files_already_stored == 0
    assert plan.labels == {"P1": "benign", "P9": "malignant"}
    staged = convert_files(store, plan.pending, config, "development", plan.labels, "run-1")
    commit_batch(store, staged, plan.stored, "development", "run-1", config.version)

    save(make_ct(), archive / "b" / "two.dcm")
    again = plan_ingest(str(archive), store, None, config)
    assert again.files_found == 3 and again.files_already_stored == 2
    assert [uri.rsplit("/", 1)[-1] for uri in again.pending] == ["two.dcm"]
    assert len(again.stored) == 1 and again.labels == {}


def test_plan_refuses_a_store_of_other_preprocessing(tmp_path: Path):
    archive = _archive(tmp_path)
    store = str(tmp_path / "store")
    plan_ingest(str(archive), store, None, PreprocessConfig(output_size=16))
    with pytest.raises(StoreError, match="preprocess_version"):
        plan_ingest(str(archive), store, None, PreprocessConfig(output_size=32))


def test_summary_accounts_batches_duplicates_and_quarantines(tmp_path: Path):
    summary = IngestSummary("/archive", str(tmp_path / "store"), "run-1", "v1")
    summary.add_batch(BatchReport(3, 3, seconds=1.5, worker="w1"))
    summary.add_batch(BatchReport(2, 1, rejects={"not_dicom": 1}, seconds=0.5, worker="w1"))
    duplicate = Reject("file:///x", RejectReason.DUPLICATE, "duplicate", "1.2")
    summary.add_duplicates([duplicate])
    summary.add_quarantined()
    assert summary.slices == 3
    assert summary.rejects == {"not_dicom": 1, "duplicate": 1, "crashed_worker": 1}
    assert summary.worker_slices == {"w1": 4} and summary.worker_seconds == {"w1": 2.0}
    assert summary_dict(summary)["n_rejects"] == 3
    assert "crashed_worker" in format_summary(summary)
