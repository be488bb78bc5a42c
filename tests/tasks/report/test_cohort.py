"""tasks/report/cohort.py: the cohort page escapes what the results table holds."""

from __future__ import annotations

import pyarrow as pa

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
