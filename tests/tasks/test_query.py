"""`renalflow query` reads the results tables and nothing else."""

from __future__ import annotations

import pytest

from renalflow.tasks.errors import InputError
from renalflow.tasks.query import run_query
from renalflow.tasks.results import STUDY_VOTES, ensure_tables, merge_rows
from tests.tasks.test_results import vote_rows


@pytest.fixture
def results(tmp_path) -> str:
    uri = str(tmp_path / "R")
    ensure_tables(uri)
    merge_rows(uri, STUDY_VOTES, vote_rows(["s1", "s2"]))
    return uri


def test_a_select_and_a_with_select_read_the_votes(results):
    assert run_query(results, "select count(*) from study_votes").column(0)[0].as_py() == 2
    sql = "with v as (select vote from study_votes) select count(*) from v"
    assert run_query(results, sql).column(0)[0].as_py() == 2


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("select * from read_csv('/etc/passwd')", "outside the results tables"),
        ("select * from read_text('/etc/hostname')", "outside the results tables"),
        ("select * from read_parquet('/tmp/*.parquet')", "outside the results tables"),
        ("copy (select 1) to '/tmp/renalflow-leak.csv'", "COPY statement"),
        ("attach '/tmp/other.duckdb' as other", "ATTACH statement"),
        ("install httpfs", "statement"),
        ("load httpfs", "statement"),
        ("set enable_external_access = true", "SET statement"),
        ("create table t as select 1", "CREATE statement"),
        ("select 1; select 2", "one SELECT statement, not 2"),
        ("pragma version", "statement"),
    ],
)
def test_anything_but_a_select_over_the_tables_is_refused(results, sql, reason, tmp_path):
    with pytest.raises(InputError, match=reason):
        run_query(results, sql)


def test_nothing_is_written_by_a_refused_copy(results, tmp_path):
    target = tmp_path / "leak.csv"
    with pytest.raises(InputError):
        run_query(results, f"copy (select * from study_votes) to '{target}'")
    assert not target.exists()
