"""tasks/linkage.py: an outside table pseudonymised with the results' key joins the votes;
with another key it is refused, and nothing identifying is written."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from renalflow.tasks.errors import InputError
from renalflow.tasks.linkage import pseudonymise_file
from renalflow.tasks.pseudonym import key_id
from renalflow.tasks.query import run_query
from tests.tasks.test_results import score_cohort
from tests.tasks.test_score import KEY

OUTCOMES = "patient_id,outcome,surgery_date\n 0042 ,malignant,2021-03-14\n0043,benign,2022-11-02\n"


@pytest.fixture
def results(tmp_path) -> str:
    uri = str(tmp_path / "R")
    score_cohort(uri, {"0042": 0.8, "0043": 0.2, "0044": 0.8})
    return uri


def test_an_outside_csv_pseudonymised_with_the_right_key_joins_the_votes(results, tmp_path):
    source = tmp_path / "outcomes.csv"
    source.write_text(OUTCOMES)
    out = tmp_path / "outcomes.pseudo.csv"
    assert pseudonymise_file(source, out, KEY, results) == 2
    assert source.read_text() == OUTCOMES  # the input is never modified
    linked = pd.read_csv(out, dtype=str)
    assert list(linked.columns) == ["patient_key", "key_id", "outcome", "surgery_date"]
    assert "0042" not in out.read_text() and "0043" not in out.read_text()
    assert set(linked["key_id"]) == {key_id(KEY)}
    votes = run_query(results, "select patient_key, vote from patient_votes").to_pandas()
    joined = linked.merge(votes, on="patient_key")
    assert sorted(zip(joined["outcome"], joined["vote"], strict=True)) == [
        ("benign", "benign"),
        ("malignant", "malignant"),
    ]


def test_a_key_other_than_the_results_is_refused_and_nothing_written(results, tmp_path):
    source = tmp_path / "outcomes.csv"
    source.write_text(OUTCOMES)
    out = tmp_path / "outcomes.pseudo.csv"
    other = b"another-department-key-0123456789"
    with pytest.raises(InputError, match=f"key id {key_id(other)}.*key id {key_id(KEY)}"):
        pseudonymise_file(source, out, other, results)
    assert not out.exists()


def test_the_input_is_never_overwritten_nor_an_existing_file(results, tmp_path):
    source = tmp_path / "outcomes.csv"
    source.write_text(OUTCOMES)
    with pytest.raises(InputError, match="is the input"):
        pseudonymise_file(source, source, KEY, results)
    taken = tmp_path / "taken.csv"
    taken.write_text("x\n")
    with pytest.raises(InputError, match="exists"):
        pseudonymise_file(source, taken, KEY, results)
    assert source.read_text() == OUTCOMES and taken.read_text() == "x\n"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("patient_id,Patient Name,outcome\n1,Doe,benign\n", "Patient Name identify patients"),
        ("patient_id,outcome,DOB\n1,benign,1950-01-01\n", "DOB identify patients"),
        ("patient_id,outcome\n1,benign\n  ,malignant\n", r"1 rows have no patient ID.*rows 2\)"),
        ("mrn_local,outcome\n1,benign\n", "no column 'patient_id'.*--id-column"),
        ("patient_id,patient_key,outcome\n1,x,benign\n", "pseudonymised already"),
    ],
)
def test_tables_that_would_leak_or_mislink_are_refused(results, tmp_path, text, reason):
    source = tmp_path / "outcomes.csv"
    source.write_text(text)
    with pytest.raises(InputError, match=reason):
        pseudonymise_file(source, tmp_path / "out.csv", KEY, results)
    assert not (tmp_path / "out.csv").exists()


def test_parquet_keeps_its_types_and_numeric_ids_are_refused(results, tmp_path):
    source = tmp_path / "outcomes.parquet"
    pq.write_table(pa.table({"mrn": ["0042"], "size_mm": [31.5]}), source)
    out = tmp_path / "out.parquet"
    pseudonymise_file(source, out, KEY, results, id_column="mrn")
    table = pq.read_table(out)
    assert table.column_names == ["patient_key", "key_id", "size_mm"]
    assert table.column("size_mm").type == pa.float64()
    numeric = tmp_path / "numeric.parquet"
    pq.write_table(pa.table({"patient_id": [42]}), numeric)
    with pytest.raises(InputError, match="not text: IDs stored as numbers lose leading zeros"):
        pseudonymise_file(numeric, tmp_path / "n.parquet", KEY, results)
    with pytest.raises(InputError, match=r"give a \.csv or \.parquet"):
        pseudonymise_file(source, tmp_path / "out.xlsx", KEY, results)
