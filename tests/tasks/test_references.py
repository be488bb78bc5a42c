"""tasks/references.py: reference outcomes loaded from a pseudonymised table into the
versioned Delta table reference_outcomes."""

from __future__ import annotations

import pytest

from renalflow.tasks.errors import InputError
from renalflow.tasks.linkage import pseudonymise_file
from renalflow.tasks.pseudonym import patient_pseudonym
from renalflow.tasks.query import run_query
from renalflow.tasks.references import load_references, outcome_month
from renalflow.tasks.results import REFERENCE_OUTCOMES, open_table
from tests.tasks.test_results import score_cohort
from tests.tasks.test_score import KEY


@pytest.fixture
def results(tmp_path) -> str:
    uri = str(tmp_path / "R")
    score_cohort(uri, {"P1": 0.8, "P2": 0.2})
    return uri


def _pseudonymised(tmp_path, text: str, key: bytes = KEY, name: str = "o") -> object:
    source = tmp_path / f"{name}.csv"
    source.write_text(text)
    out = tmp_path / f"{name}.pseudo.csv"
    pseudonymise_file(source, out, key, str(tmp_path / "R"))
    return out


def test_outcomes_load_once_and_a_correction_makes_a_new_version(results, tmp_path):
    text = "patient_id,outcome,surgery\nP1,Malignant,20210314\nP2,benign,2022-11\n"
    path = _pseudonymised(tmp_path, text)
    assert load_references(path, results, "histology", date_column="surgery") == {
        "inserted": 2,
        "updated": 0,
    }
    assert load_references(path, results, "histology", date_column="surgery")["inserted"] == 0
    rows = run_query(results, "select patient_key, outcome, source, outcome_year_month "
                     "from reference_outcomes order by outcome").to_pylist()  # fmt: skip
    assert rows == [
        {"patient_key": patient_pseudonym(KEY, "P2"), "outcome": "benign",
         "source": "histology", "outcome_year_month": "2022-11"},
        {"patient_key": patient_pseudonym(KEY, "P1"), "outcome": "malignant",
         "source": "histology", "outcome_year_month": "2021-03"},
    ]  # fmt: skip
    version = open_table(results, REFERENCE_OUTCOMES).version()
    fixed = _pseudonymised(tmp_path, "patient_id,outcome\nP2,malignant\n", name="fixed")
    assert load_references(fixed, results, "histology")["updated"] == 1
    assert open_table(results, REFERENCE_OUTCOMES).version() == version + 1
    # Another source is another row.
    assert load_references(fixed, results, "follow-up")["inserted"] == 1


def test_pseudonyms_of_another_key_are_refused(results, tmp_path):
    other = str(tmp_path / "Other")
    theirs = b"another-department-key-0123456789"
    score_cohort(other, {"P1": 0.8}, key=theirs)
    source = tmp_path / "o.csv"
    source.write_text("patient_id,outcome\nP1,benign\n")
    pseudonymise_file(source, tmp_path / "theirs.csv", theirs, other)
    with pytest.raises(InputError, match=r"under key id .* but .* was written under key id"):
        load_references(tmp_path / "theirs.csv", results, "histology")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("patient_id,outcome\nP1,oncocytoma\n", "must be benign or malignant; found 'oncocytoma'"),
        ("patient_id,outcome\nP1,benign\nP1,malignant\n", "two different outcomes"),
    ],
)
def test_outcomes_outside_the_vocabulary_are_refused(results, tmp_path, text, reason):
    path = _pseudonymised(tmp_path, text)
    with pytest.raises(InputError, match=reason):
        load_references(path, results, "histology")


def test_a_table_not_pseudonymised_is_refused(results, tmp_path):
    raw = tmp_path / "raw.csv"
    raw.write_text("patient_id,outcome\nP1,benign\n")
    with pytest.raises(InputError, match="pseudonymise it first"):
        load_references(raw, results, "histology")
    forged = tmp_path / "forged.csv"
    forged.write_text("patient_key,key_id,outcome\nP1,abc,benign\n")
    with pytest.raises(InputError, match="not pseudonyms"):
        load_references(forged, results, "histology")


def test_dates_become_year_and_month():
    assert outcome_month("2021-03-14") == outcome_month("20210314") == "2021-03"
    assert outcome_month("2021-03-14T10:00:00") == "2021-03"
    assert outcome_month("") is None
    with pytest.raises(InputError, match="not a date"):
        outcome_month("14/03/2021")
