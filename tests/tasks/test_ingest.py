import shutil
from pathlib import Path

import pytest

from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.errors import InputError
from renalflow.tasks.ingest import (
    commit_batch,
    convert_files,
    discover_files,
    group_files,
    read_labels,
)
from renalflow.tasks.store import REJECTS, SLICES, read_table
from tests.factory import CORONAL, make_ct, save


def test_batches_keep_folders_together_and_split_large_ones():
    uris = [f"file:///a/s1/{i}" for i in range(5)] + [f"file:///a/s2/{i}" for i in range(2)]
    uris += [f"file:///a/s3/{i}" for i in range(2)]
    batches = group_files(list(reversed(uris)), batch_size=4)
    assert batches == [uris[0:4], [uris[4], *uris[5:7]], uris[7:9]]
    assert sorted(u for b in batches for u in b) == sorted(uris)


def test_convert_and_commit_account_for_every_file(tmp_path: Path):
    archive = tmp_path / "archive"
    good = save(make_ct(), archive / "a" / "good.dcm")
    save(make_ct(orientation=CORONAL), archive / "a" / "coronal.dcm")
    (archive / "a" / "junk.bin").write_bytes(b"\x00" * 64)
    (archive / "b").mkdir()
    shutil.copy(good, archive / "b" / "copy.dcm")
    store = str(tmp_path / "store")
    uris = discover_files(str(archive))
    assert len(uris) == 4 and all(u.startswith("file://") for u in uris)
    config = PreprocessConfig(output_size=16)
    first, second = group_files(uris, batch_size=3)
    staged = convert_files(store, first, config, "development", {"P1": "benign"}, "run-1")
    assert staged.report.rejects == {"not_axial": 1, "not_dicom": 1}
    assert read_table(store, SLICES).num_rows == 0  # staged, not yet visible
    stored: dict[str, str] = {}
    assert commit_batch(store, staged, stored, "development", "run-1", config.version) == []
    row = read_table(store, SLICES).to_pylist()[0]
    assert row["label"] == "benign" and row["cohort"] == "development"
    # The same image again, from another folder and batch: a duplicate, not a second row.
    again = convert_files(store, second, config, "development", {}, "run-1")
    duplicates = commit_batch(store, again, stored, "development", "run-1", config.version)
    assert [d.source_uri for d in duplicates] == second
    assert read_table(store, SLICES).num_rows == 1
    reasons = read_table(store, REJECTS).column("reason_code").to_pylist()
    assert sorted(reasons) == ["duplicate", "not_axial", "not_dicom"]


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
