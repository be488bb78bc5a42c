"""DuckDB SQL over the results table, now or as it was at a version or time."""

from __future__ import annotations

import io
import json
from datetime import date, datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from renalflow.tasks.errors import InputError
from renalflow.tasks.results import DESCRIBED, data_dictionary, tables_as_of

FORMATS = ("table", "csv", "json", "parquet")


# DuckDB settings that make a query session read the registered tables and nothing else:
# no files, no network, no extensions installed or loaded, and (set after the tables are
# registered) no way to change any of this from the SQL.
LOCKED_DOWN: dict[str, str | bool | int | float | list[str]] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
}


def check_select(con: Any, sql: str) -> None:
    """Exactly one SELECT (a WITH ... SELECT is one); anything else is refused by name."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as err:
        raise InputError(f"the query is not valid SQL: {err}") from err
    if len(statements) != 1:
        raise InputError(f"give one SELECT statement, not {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise InputError(
            f"only a SELECT (or WITH ... SELECT) over {', '.join(DESCRIBED)} is allowed; "
            f"this is a {kind.name} statement"
        )


def run_query(
    results: str,
    sql: str,
    as_of: int | datetime | None = None,
    *,
    tables: dict[str, pa.Table] | None = None,
) -> pa.Table:
    """Run one SELECT with the tables of R (`study_votes`, `patient_votes`,
    `slice_scores`, `reference_outcomes`) as views; an Arrow table back.

    The session reads those tables and nothing else (LOCKED_DOWN): no file access,
    no extensions, no settings changed from the SQL. `tables` (tasks.results.read_pinned)
    runs it on tables already read instead of reading R again.
    """
    con = duckdb.connect(config=LOCKED_DOWN)
    try:
        check_select(con, sql)
        # Materialised, not scanned lazily: DuckDB pushes string filters into a pyarrow
        # dataset as string_view, which pyarrow cannot compare with its strings, and a
        # view may be read twice in one query (self-joins across model versions).
        for name, table in (tables or tables_as_of(results, as_of)).items():
            con.register(name, table)
        con.execute("set lock_configuration = true")
        try:
            result = con.sql(sql)
        except duckdb.PermissionException as err:
            raise InputError(
                f"the query tried to reach outside the results tables, which is not allowed: {err}"
            ) from err
        except duckdb.Error as err:
            raise InputError(f"the query failed: {err}") from err
        if result is None:
            raise InputError("the query returned no result set; use a SELECT")
        return result.to_arrow_table()
    finally:
        con.close()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def format_result(table: pa.Table, fmt: str, max_rows: int = 200) -> str | bytes:
    """`table` as text (table, csv, json) or Parquet bytes."""
    if fmt == "parquet":
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()
    if fmt == "csv":
        sink = io.BytesIO()
        pcsv.write_csv(table, sink)
        return sink.getvalue().decode()
    if fmt == "json":
        rows = [{k: _plain(v) for k, v in row.items()} for row in table.to_pylist()]
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "table":
        return _text_table(table, max_rows)
    raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(_plain(value))


def _text_table(table: pa.Table, max_rows: int) -> str:
    names = table.column_names
    rows = [[_cell(v) for v in row.values()] for row in table.slice(0, max_rows).to_pylist()]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in table.schema]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    out = [line(names), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    shown = min(max_rows, table.num_rows)
    suffix = "" if shown == table.num_rows else f" (first {shown} shown)"
    out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}{suffix})")
    return "\n".join(out) + "\n"


def describe() -> pa.Table:
    """The data dictionary (`renalflow query --describe`): every column of R, the tables
    that have it and what it means."""
    return pa.Table.from_pylist(data_dictionary())
