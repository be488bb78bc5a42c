from pathlib import Path

import pytest

from tasks.config import PreprocessConfig
from tasks.dicom import SliceHeader
from tasks.errors import InputError, is_transient_io
from tasks.ingest import (
    ScannedFile,
    convert_files,
    discover_files,
    plan_batches,
    read_labels,
    scan_files,
)
from tasks.store import REJECTS, SLICES, Ledger, read_table
from tests.factory import CORONAL, make_ct, save


def _scanned(uri: str, sop: str, series: str = "S1", z: float = 0.0) -> ScannedFile:
    header = SliceHeader(
        patient_id="P",
        study_instance_uid="ST",
        series_instance_uid=series,
        sop_instance_uid=sop,
        instance_number=1,
        z=z,
        phase="unknown",
        slice_thickness=3.0,
        pixel_spacing=(0.7, 0.7),
        manufacturer="",
        transfer_syntax="1.2.840.10008.1.2.1",
        study_date="",
        series_description="",
        kvp=120.0,
        photometric_interpretation="MONOCHROME2",
        rows=16,
        columns=16,
        rescale_slope=1.0,
        rescale_intercept=-1024.0,
        window_center_file=None,
        window_width_file=None,
    )
    return ScannedFile(uri, header)


def test_plan_keeps_series_together_and_orders_by_z():
    items = [_scanned(f"f{i}", f"sop{i}", series="A" if i < 3 else "B", z=-i) for i in range(6)]
    plan = plan_batches(items, Ledger(), batch_size=3)
    assert [[s.source_uri for s in b] for b in plan.batches] == [
        ["f2", "f1", "f0"],
        ["f5", "f4", "f3"],
    ]


def test_plan_splits_long_series_and_packs_short_ones():
    items = [_scanned(f"a{i}", f"a{i}", "A", i) for i in range(5)]
    items += [_scanned(f"b{i}", f"b{i}", "B", i) for i in range(2)]
    plan = plan_batches(items, Ledger(), batch_size=4)
    assert [len(b) for b in plan.batches] == [4, 3]
    assert sum(len(b) for b in plan.batches) == 7


def test_plan_rejects_files_already_stored_and_holds_in_run_duplicates():
    ledger = Ledger(source_uris={"old"}, sop_sources={"sop1": "old"})
    items = [_scanned("x", "sop1"), _scanned("b", "sop2"), _scanned("a", "sop2")]
    plan = plan_batches(items, ledger, batch_size=10)
    assert [d.source_uri for d in plan.duplicates] == ["x"]
    assert "already stored from old" in plan.duplicates[0].reason
    assert [s.source_uri for s in plan.batches[0]] == ["a"]  # first by URI wins
    assert [s.source_uri for s in plan.held] == ["b"]


def test_scan_and_convert_account_for_every_file(tmp_path: Path):
    archive = tmp_path / "archive"
    good = save(make_ct(), archive / "good.dcm")
    save(make_ct(orientation=CORONAL), archive / "coronal.dcm")
    (archive / "junk.bin").write_bytes(b"\x00" * 64)
    store = str(tmp_path / "store")
    uris = discover_files(str(archive))
    assert len(uris) == 3 and all(u.startswith("file://") for u in uris)
    config = PreprocessConfig(output_size=16)
    accepted, report = scan_files(store, uris, config, "development", "run-1")
    assert [a.source_uri for a in accepted] == [good.as_uri()]
    assert report.rejects == {"not_axial": 1, "not_dicom": 1}
    batch = convert_files(store, accepted, config, "development", {"P1": "benign"}, "run-1")
    assert batch.n_slices == 1
    row = read_table(store, SLICES).to_pylist()[0]
    assert row["label"] == "benign" and row["cohort"] == "development"
    assert read_table(store, REJECTS).num_rows == 2


def test_labels_file_needs_its_columns(tmp_path: Path):
    labels = tmp_path / "labels.csv"
    labels.write_text("id,diagnosis\n1,benign\n")
    with pytest.raises(InputError, match="needs the columns patient_id,label"):
        read_labels(str(labels))


def test_labels_conflict_is_refused(tmp_path: Path):
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\nP1,benign\nP1,Malignant\n")
    with pytest.raises(InputError, match="labelled both benign and malignant"):
        read_labels(str(labels))


def test_labels_are_case_insensitive(tmp_path: Path):
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label,histology\nP1,Benign,oncocytoma\n")
    assert read_labels(str(labels)) == {"P1": "benign"}


def test_only_transient_io_errors_are_retried():
    assert is_transient_io(TimeoutError("read timed out"))
    assert is_transient_io(ConnectionResetError())
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = OSError("503 SlowDown")
    assert is_transient_io(wrapped)
    assert not is_transient_io(ValueError("JPEG 2000 decoder failed"))
    assert not is_transient_io(FileNotFoundError("gone"))
