"""The Delta results table: idempotent merges, concurrent writers, time travel, queries."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from renalflow.tasks.errors import InputError, StoreError
from renalflow.tasks.query import format_result, run_query
from renalflow.tasks.results import (
    PATIENT_VOTES,
    PATIENT_VOTES_SCHEMA,
    SLICE_SCORES,
    ensure_tables,
    history,
    merge_rows,
    open_table,
    parse_as_of,
    scored_studies,
)


def vote_rows(studies: list[str], model: str = "m1", n_images: int = 12) -> pa.Table:
    now = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    rows = [
        {
            "patient_key": f"p-{s}",
            "study_key": s,
            "key_id": "k",
            "study_year_month": "2017-03",
            "cohort": "screening",
            "manufacturer": "SIEMENS",
            "phases": "arterial,venous",
            "n_series": 2,
            "n_images": n_images,
            "n_malignant": 9,
            "fraction_malignant": 0.75,
            "vote": "malignant",
            "vote_threshold": 0.51,
            "image_threshold": 0.5,
            "mean_probability": 0.7,
            "reference_label": None,
            "qc_too_few_images": False,
            "qc_noncontrast_only": False,
            "qc_flags": "",
            "model_version": model,
            "model_profile": "cpu-demo",
            "preprocess_version": "pv",
            "scored_at": now,
            "flow_run_id": "run",
            "archive_uri": "/archive",
        }
        for s in studies
    ]
    return pa.Table.from_pylist(rows, schema=PATIENT_VOTES_SCHEMA)


@pytest.fixture
def results(tmp_path) -> str:
    uri = str(tmp_path / "R")
    ensure_tables(uri)
    return uri


def count(results: str, sql: str = "select count(*) from patient_votes") -> int:
    return int(run_query(results, sql).column(0)[0].as_py())


def test_merge_is_idempotent_and_model_versions_keep_their_own_rows(results):
    assert merge_rows(results, PATIENT_VOTES, vote_rows(["a", "b"]))["inserted"] == 2
    assert merge_rows(results, PATIENT_VOTES, vote_rows(["a", "b"]))["inserted"] == 0
    assert merge_rows(results, PATIENT_VOTES, vote_rows(["b", "c"]))["inserted"] == 1
    assert merge_rows(results, PATIENT_VOTES, vote_rows(["a"], model="m2"))["inserted"] == 1
    assert count(results) == 4
    assert scored_studies(results, "m1") == {"a": 12, "b": 12, "c": 12}
    assert scored_studies(results, "m2") == {"a": 12}


def test_a_study_with_more_images_replaces_its_vote(results):
    merge_rows(results, PATIENT_VOTES, vote_rows(["a"]))
    written = merge_rows(
        results,
        PATIENT_VOTES,
        vote_rows(["a"], n_images=20),
        replace_when="t.n_images <> s.n_images",
    )
    assert written == {"inserted": 0, "updated": 1}
    assert scored_studies(results, "m1") == {"a": 20}


def test_identifier_columns_are_refused(results):
    rows = vote_rows(["a"]).append_column("patient_id", pa.array(["PAT00001"]))
    with pytest.raises(InputError, match="identifier"):
        merge_rows(results, PATIENT_VOTES, rows)
    assert count(results) == 0


def _merge_in_process(results: str, studies: list[str], start: float) -> None:
    import time

    while time.time() < start:
        time.sleep(0.001)
    merge_rows(results, PATIENT_VOTES, vote_rows(studies))


def test_concurrent_writers_neither_duplicate_nor_lose_rows(results):
    import time

    start = time.time() + 1.5
    ctx = multiprocessing.get_context("spawn")
    # Four processes write overlapping sets of studies at the same moment.
    sets = [["a", "b", "c"], ["b", "c", "d"], ["c", "d", "e"], ["a", "e", "f"]]
    procs = [ctx.Process(target=_merge_in_process, args=(results, s, start)) for s in sets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    keys = run_query(results, "select study_key from patient_votes order by 1").column(0)
    assert keys.to_pylist() == ["a", "b", "c", "d", "e", "f"]


def test_as_of_reads_an_earlier_version_by_number_and_by_time(results):
    merge_rows(results, PATIENT_VOTES, vote_rows(["a"]))
    first = datetime.now(UTC)
    import time

    time.sleep(1.1)
    merge_rows(results, PATIENT_VOTES, vote_rows(["b", "c"]))
    versions = [h["version"] for h in history(results)]
    assert versions == [2, 1, 0]
    assert count(results) == 3
    assert (
        int(run_query(results, "select count(*) from patient_votes", 1).column(0)[0].as_py()) == 1
    )
    assert (
        int(run_query(results, "select count(*) from patient_votes", first).column(0)[0].as_py())
        == 1
    )
    assert parse_as_of("1") == 1
    assert parse_as_of("2026-11-27T02:00:00Z") == datetime(2026, 11, 27, 2, tzinfo=UTC)
    with pytest.raises(InputError, match="version number"):
        parse_as_of("yesterday")
    with pytest.raises(InputError, match="no version"):
        open_table(results, PATIENT_VOTES, 99)
    with pytest.raises(InputError):
        run_query(results, "select 1", first - timedelta(days=365))


def test_query_formats(results, tmp_path):
    merge_rows(results, PATIENT_VOTES, vote_rows(["a", "b"]))
    table = run_query(
        results, "select vote, count(*) as n, max(scored_at) as t from patient_votes group by vote"
    )
    text = format_result(table, "table")
    assert "malignant" in text and "(1 row)" in text
    assert format_result(table, "csv").splitlines()[0] == '"vote","n","t"'
    parsed = json.loads(format_result(table, "json"))
    assert parsed[0]["vote"] == "malignant" and parsed[0]["n"] == 2
    assert parsed[0]["t"].startswith("2026-11-27T02:00:00")
    path = tmp_path / "out.parquet"
    path.write_bytes(format_result(table, "parquet"))  # type: ignore[arg-type]
    assert pq.read_table(path).num_rows == 1
    # Filters on strings and self-joins, as in the README's examples.
    one = run_query(results, "select count(*) from patient_votes where study_key = 'a'")
    assert one.column(0)[0].as_py() == 1
    pairs = run_query(
        results,
        "select count(*) from patient_votes a join patient_votes b using (study_key) "
        "where a.model_version = 'm1' and b.model_version = 'm1'",
    )
    assert pairs.column(0)[0].as_py() == 2
    with pytest.raises(InputError, match="query failed"):
        run_query(results, "select nonsense from patient_votes")


def test_reading_a_missing_table_says_how_to_make_one(tmp_path):
    with pytest.raises(StoreError, match="renalflow score"):
        open_table(str(tmp_path / "nothing"), SLICE_SCORES)


def test_cohort_report_summarises_votes_by_year_vendor_and_phase(results, tmp_path):
    from renalflow.tasks.report import cohort_report

    merge_rows(results, PATIENT_VOTES, vote_rows(["a", "b"]))
    merge_rows(results, PATIENT_VOTES, vote_rows(["a"], model="m2"))
    path = cohort_report(results, tmp_path / "cohort")
    page = path.read_text()
    for title in ("Votes by study year", "Votes by scanner vendor", "Votes by phase mix"):
        assert title in page
    assert page.count("data:image/png;base64,") == 3
    assert "<td>2017</td><td>m1</td><td>0</td><td>2</td>" in page
    assert "arterial,venous" in page and "SIEMENS" in page
    pinned = cohort_report(results, tmp_path / "pinned", 1).read_text()
    assert "m2" not in pinned.split("Model versions")[1].split("</table>")[0]
