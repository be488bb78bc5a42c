"""tasks/report/cohort.py: the cohort page escapes what the results table holds."""

from __future__ import annotations

import pyarrow as pa
import pytest

from renalflow.tasks.report import cohort_report
from renalflow.tasks.results import STUDY_VOTES, STUDY_VOTES_SCHEMA, ensure_tables, merge_rows
from tests.factory import ESCAPED, HOSTILE
from tests.tasks.test_results import vote_rows


def test_cohort_report_escapes_what_the_results_table_holds(tmp_path):
    results = str(tmp_path / "R")
    ensure_tables(results)
    hostile = vote_rows(["a"]).to_pylist()
    for row in hostile:
        row.update(manufacturer=f"ACME {HOSTILE}", phases=HOSTILE, qc_flags=HOSTILE)
        row.update(model_version=f"m{HOSTILE}", model_profile=HOSTILE)
    merge_rows(results, STUDY_VOTES, pa.Table.from_pylist(hostile, schema=STUDY_VOTES_SCHEMA))
    page = cohort_report(results, tmp_path / "out").path.read_text()
    assert "<script>" not in page
    assert f"<td>ACME {ESCAPED}</td>" in page and f"<td>{ESCAPED}</td><td>1</td>" in page
    assert f"<tr><td>m{ESCAPED}</td><td>{ESCAPED}</td><td>1</td></tr>" in page
    assert page.count("data:image/png;base64,") == 3


def _half_trained_cohort(tmp_path) -> str:
    """8 patients, 4 of whom trained (3) or validated (1) the model; outcomes for all."""
    from renalflow.tasks.linkage import pseudonymise_file
    from renalflow.tasks.model_dir import ModelDir, training_membership
    from renalflow.tasks.references import load_references
    from renalflow.tasks.split import SplitConfig, save_split
    from tests.tasks.test_results import score_cohort
    from tests.tasks.test_score import KEY

    split = {"P1": "train", "P2": "train", "P3": "train", "P4": "validation", "P5": "test"}
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    save_split(split, dict.fromkeys(split, "malignant"), SplitConfig(), ModelDir(model_dir).split)
    votes = {"P1": 0.8, "P2": 0.8, "P3": 0.8, "P4": 0.8, "P5": 0.8, "P6": 0.2, "P7": 0.2}
    votes["P8"] = 0.8
    results = str(tmp_path / "R")
    score_cohort(results, votes, training_membership(model_dir, KEY))
    outcomes = {"P1": "malignant", "P2": "malignant", "P3": "malignant", "P4": "malignant"}
    outcomes.update(P5="malignant", P6="benign", P7="malignant", P8="benign")
    source = tmp_path / "outcomes.csv"
    source.write_text("patient_id,outcome\n" + "".join(f"{p},{o}\n" for p, o in outcomes.items()))
    pseudonymise_file(source, tmp_path / "outcomes.pseudo.csv", KEY, results)
    load_references(tmp_path / "outcomes.pseudo.csv", results, "histology")
    return results


def test_a_cohort_half_of_which_trained_the_model_is_flagged_and_left_out(tmp_path):
    import pandas as pd

    from renalflow.tasks.query import run_query

    results = _half_trained_cohort(tmp_path)
    flagged = run_query(results, "select in_training, count(*) as n from patient_votes "
                        "group by 1 order by 1").to_pylist()  # fmt: skip
    assert flagged == [{"in_training": "none", "n": 4}, {"in_training": "training", "n": 3},
                       {"in_training": "validation", "n": 1}]  # fmt: skip
    report = cohort_report(results, tmp_path / "out")
    assert (report.excluded_patients, report.excluded_studies) == (4, 4)
    assert report.compared_patients == 4
    page = report.path.read_text()
    assert "Left out: 4 patient votes and 4 study votes" in page
    agreement = pd.read_csv(tmp_path / "out" / "agreement.csv")
    overall = agreement[(agreement["unit"] == "patients") & (agreement["by"] == "all")]
    # P5 TP, P6 TN, P7 FN, P8 FP: the hand-made 2x2 table of the patients left.
    assert overall[["n", "tp", "fp", "tn", "fn"]].values.tolist() == [[4, 1, 1, 1, 1]]
    assert overall[["sensitivity", "specificity", "ppv", "npv"]].values.tolist() == [
        [0.5, 0.5, 0.5, 0.5]
    ]
    # Wilson 95% for 1 of 2 (by hand: 0.5 -+ z*sqrt(0.125 + z²/16)/(1 + z²/2)).
    assert overall["sensitivity_ci_low"].item() == pytest.approx(0.0945, abs=1e-4)
    assert overall["sensitivity_ci_high"].item() == pytest.approx(0.9055, abs=1e-4)
    assert "sensitivity rests on 2 cases" in overall["warnings"].item()
    assert page.count("data:image/png;base64,") == 5  # 3 vote plots, 2 forest plots
    everyone = cohort_report(results, tmp_path / "all", include_training=True)
    assert (everyone.excluded_patients, everyone.compared_patients) == (0, 8)
    assert "Training and validation patients are included" in everyone.path.read_text()
