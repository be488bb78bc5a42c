"""tasks/extract.py: a frozen extract re-run from its manifest is byte-identical."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest

from renalflow.tasks.errors import InputError
from renalflow.tasks.extract import MANIFEST, ROWS_CSV, ROWS_PARQUET, rerun_extract, write_extract
from renalflow.tasks.results import history
from tests.tasks.test_results import score_cohort
from tests.tasks.test_score import INFO

SQL = "select vote, patient_key, n_images, in_training from patient_votes"


def test_an_extract_rerun_from_its_manifest_is_byte_identical(tmp_path):
    results = str(tmp_path / "R")
    score_cohort(results, {"P1": 0.8, "P2": 0.2, "P3": 0.8})
    version = history(results)[0]["version"]
    first = tmp_path / "first"
    manifest = write_extract(results, SQL, first, "1.2.3", as_of=version)
    # R moves on: more patients, another model version.
    score_cohort(results, {"P4": 0.2, "P5": 0.8}, run_id="r2")
    again = tmp_path / "again"
    rerun_extract(first / MANIFEST, again, "1.2.3")
    for name in (ROWS_PARQUET, ROWS_CSV, MANIFEST):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name
    assert manifest["rows"] == 3 and manifest["as_of"] == version
    assert manifest["table_versions"]["study_votes"] == version
    assert manifest["models"][0]["model_version"] == INFO.model_version
    for name in (ROWS_PARQUET, ROWS_CSV):
        digest = hashlib.sha256((first / name).read_bytes()).hexdigest()
        assert json.loads((first / MANIFEST).read_text())["files"][name]["sha256"] == digest
    # Rows sorted by every column, left to right: benign first.
    votes = pq.read_table(first / ROWS_PARQUET).column("vote").to_pylist()
    assert votes == ["benign", "malignant", "malignant"]
    latest = write_extract(results, SQL, tmp_path / "latest", "1.2.3")
    assert latest["rows"] == 5 and latest["as_of"] > version


def test_an_extract_never_writes_into_a_folder_with_files(tmp_path):
    results = str(tmp_path / "R")
    score_cohort(results, {"P1": 0.8})
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        write_extract(results, SQL, taken, "1.2.3")
    with pytest.raises(InputError, match="not a readable extract manifest"):
        rerun_extract(taken / "notes.txt", tmp_path / "x", "1.2.3")
