"""Reference outcomes (histology, follow-up, surgery) in R: the versioned Delta table
`reference_outcomes`, loaded from a table pseudonymised by `renalflow pseudonymise`.

One row per patient and source; loading the same file again adds nothing, a changed
outcome or month replaces the row (a new version; the old one stays readable with
--as-of). Dates are kept as year and month only, as everywhere in R.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from renalflow.tasks.config import OUTCOME_COLUMN, Label
from renalflow.tasks.errors import InputError
from renalflow.tasks.linkage import (
    KEY_ID,
    PATIENT_KEY,
    check_same_key,
    distinct_strings,
    read_outside_table,
)
from renalflow.tasks.results import (
    DESCRIBED,
    REFERENCE_OUTCOMES,
    check_layout,
    ensure_table,
    merge_rows,
)
from renalflow.tasks.store import now_utc

_PSEUDONYM = re.compile(r"[0-9a-f]{64}")


def outcome_month(value: Any) -> str | None:
    """A date (2021-03-14, 20210314, 2021-03, a date or timestamp) as `YYYY-MM`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime | date):
        return f"{value.year:04d}-{value.month:02d}"
    match = re.fullmatch(r"(\d{4})-?(\d{2})(-?\d{2}([T ].*)?)?", str(value).strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise InputError(f"date {value!r} is not a date like 2021-03-14, 20210314 or 2021-03")
    return f"{match.group(1)}-{match.group(2)}"


def reference_rows(
    table: pa.Table,
    source: str,
    outcome_column: str = OUTCOME_COLUMN,
    date_column: str | None = None,
    run_id: str | None = None,
) -> pa.Table:
    """Rows of reference_outcomes from a pseudonymised table, every value checked."""
    for column in (PATIENT_KEY, KEY_ID):
        if column not in table.column_names:
            raise InputError(
                f"the table has no {column} column: pseudonymise it first with "
                "`renalflow pseudonymise FILE --results R --out FILE.pseudo.csv`"
            )
    for column, option in ((outcome_column, "--outcome-column"), (date_column, "--date-column")):
        if column is not None and column not in table.column_names:
            raise InputError(
                f"no column {column!r} (columns: {', '.join(table.column_names)}); name it "
                f"with {option}"
            )
    if not source.strip():
        raise InputError("--source must say where the outcomes come from (e.g. histology)")
    keys = [str(k) for k in table.column(PATIENT_KEY).to_pylist()]
    if not all(_PSEUDONYM.fullmatch(k) for k in keys):
        raise InputError(
            f"{PATIENT_KEY} holds values that are not pseudonyms: pseudonymise the table "
            "with `renalflow pseudonymise` and load its output"
        )
    ids = distinct_strings(table.column(KEY_ID))
    if len(ids) > 1:
        raise InputError(f"the table mixes pseudonyms of {len(ids)} keys ({', '.join(ids)})")
    raw = [str(v or "").strip().lower() for v in table.column(outcome_column).to_pylist()]
    allowed = {label.value for label in Label}
    wrong = sorted(set(raw) - allowed)
    if wrong:
        raise InputError(
            f"{outcome_column!r} must be {' or '.join(sorted(allowed))}; found "
            f"{', '.join(repr(w) for w in wrong[:5])}"
        )
    months = (
        [outcome_month(v) for v in table.column(date_column).to_pylist()]
        if date_column
        else [None] * table.num_rows
    )
    seen: dict[str, str] = {}
    for key, outcome in zip(keys, raw, strict=True):
        if seen.setdefault(key, outcome) != outcome:
            raise InputError(
                "a patient has two different outcomes in this table (one source, one "
                "outcome per patient): correct the file, or load each source separately"
            )
    loaded_at = now_utc()
    rows = {
        (key, source): {
            PATIENT_KEY: key,
            KEY_ID: ids[0] if ids else "",
            "outcome": outcome,
            "source": source.strip(),
            "outcome_year_month": month,
            "loaded_at": loaded_at,
            "flow_run_id": run_id,
        }
        for key, outcome, month in zip(keys, raw, months, strict=True)
    }
    return pa.Table.from_pylist(
        [rows[k] for k in sorted(rows)], schema=DESCRIBED[REFERENCE_OUTCOMES]
    )


def load_references(
    path: Path,
    results: str,
    source: str,
    outcome_column: str = OUTCOME_COLUMN,
    date_column: str | None = None,
    run_id: str | None = None,
) -> dict[str, int]:
    """Merge the outcomes of the pseudonymised table at `path` into R's
    reference_outcomes; refuses pseudonyms of another key than the results'. Returns
    the rows inserted and updated."""
    rows = reference_rows(
        read_outside_table(path), source, outcome_column, date_column, run_id=run_id
    )
    if rows.num_rows:
        check_same_key(str(rows.column(KEY_ID)[0].as_py()), results, path.name)
    check_layout(results)
    ensure_table(results, REFERENCE_OUTCOMES)
    return merge_rows(
        results,
        REFERENCE_OUTCOMES,
        rows,
        replace_when="t.outcome <> s.outcome OR "
        "t.outcome_year_month IS DISTINCT FROM s.outcome_year_month",
        run_id=run_id,
    )
