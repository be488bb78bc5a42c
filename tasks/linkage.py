"""Linking an outside table (histology, follow-up, surgery) to the results: its PatientID
column replaced by the results' pseudonym, with the same key and the same normalisation
(tasks.pseudonym.patient_pseudonym), so the two join on `patient_key`.

The input is read, never modified; the output is a new file (CSV or Parquet, as the
input) holding `patient_key` where the ID column was, and `key_id` beside it, so that
whoever loads it can check it was made under the results' key. Columns whose names say
they identify someone (names, birth dates, accession numbers...) are refused rather than
copied, and no PatientID is written anywhere, not even in an error message.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from renalflow.tasks.config import ID_COLUMN
from renalflow.tasks.errors import InputError
from renalflow.tasks.pseudonym import key_id, patient_pseudonym
from renalflow.tasks.results import FORBIDDEN_COLUMNS, STUDY_VOTES, open_table

PATIENT_KEY = "patient_key"
KEY_ID = "key_id"

# Column names (lower case, spaces and dashes as underscores) that identify a person:
# R's forbidden columns, and what outcome spreadsheets call them.
IDENTIFYING_COLUMNS = FORBIDDEN_COLUMNS | {
    "name",
    "first_name",
    "last_name",
    "surname",
    "given_name",
    "birth_date",
    "date_of_birth",
    "dob",
    "mrn",
    "ssn",
    "cpr",
    "nhs_number",
    "address",
    "phone",
    "email",
}

SUFFIXES = (".csv", ".parquet")


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(
            f"{path.name}: give a .csv or .parquet file (export the spreadsheet as CSV)"
        )
    return suffix


def read_outside_table(path: Path) -> pa.Table:
    """A CSV (every column read as text, exactly as written: leading zeros and spacing
    of IDs kept) or Parquet file."""
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    if _kind(path) == ".parquet":
        return pq.read_table(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise InputError(f"{path} is empty: it needs a header row")
    return pcsv.read_csv(
        path,
        read_options=pcsv.ReadOptions(encoding="utf-8-sig"),
        convert_options=pcsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def write_outside_table(table: pa.Table, path: Path) -> None:
    """Write `table` as `path` says (CSV or Parquet), whole or not at all."""
    partial = path.with_name(f".{path.name}.partial")
    if _kind(path) == ".parquet":
        pq.write_table(table, partial)
    else:
        pcsv.write_csv(table, partial, write_options=pcsv.WriteOptions(quoting_style="needed"))
    os.replace(partial, path)


def results_key_id(results: str) -> str | None:
    """The key fingerprint of the results' pseudonyms (None for an empty table)."""
    rows = open_table(results, STUDY_VOTES).to_pyarrow_dataset().head(1, columns=[KEY_ID])
    return str(rows.column(KEY_ID)[0].as_py()) if rows.num_rows else None


def check_same_key(key_fingerprint: str, results: str, what: str) -> None:
    """Refuse pseudonyms of another key than the results': they would join nothing."""
    theirs = results_key_id(results)
    if theirs is not None and theirs != key_fingerprint:
        raise InputError(
            f"{what} is under key id {key_fingerprint}, but {results} was written under "
            f"key id {theirs}: use the key the results were scored with "
            "(RENALFLOW_PSEUDONYM_KEY or --key-secret)"
        )


def _normalised_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def pseudonymise_table(table: pa.Table, id_column: str, key: bytes) -> pa.Table:
    """`table` with `id_column` replaced, in place, by `patient_key` and `key_id`."""
    if id_column not in table.column_names:
        raise InputError(
            f"no column {id_column!r} (columns: {', '.join(table.column_names)}); name the "
            "patient ID column with --id-column"
        )
    taken = {PATIENT_KEY, KEY_ID} & set(table.column_names)
    if taken:
        raise InputError(
            f"the table already has {', '.join(sorted(taken))}: it looks pseudonymised "
            "already; give the table with the hospital's patient IDs"
        )
    identifying = sorted(
        name
        for name in table.column_names
        if name != id_column and _normalised_name(name) in IDENTIFYING_COLUMNS
    )
    if identifying:
        raise InputError(
            f"columns {', '.join(identifying)} identify patients and would be copied into "
            "the output: remove them from the input (keep only the ID column and outcomes)"
        )
    ids = table.column(id_column)
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise InputError(
            f"column {id_column!r} holds {ids.type}, not text: IDs stored as numbers lose "
            "leading zeros; store the column as text (or export as CSV)"
        )
    values = ids.to_pylist()
    blank = [i + 1 for i, v in enumerate(values) if v is None or not str(v).strip()]
    if blank:
        shown = ", ".join(str(i) for i in blank[:5]) + (" ..." if len(blank) > 5 else "")
        raise InputError(
            f"{len(blank)} rows have no patient ID in {id_column!r} (data rows {shown}): "
            "fill them in or remove them"
        )
    index = table.column_names.index(id_column)
    keys = pa.array([patient_pseudonym(key, v) for v in values], pa.string())
    out = table.set_column(index, PATIENT_KEY, keys)
    return out.add_column(index + 1, KEY_ID, pa.array([key_id(key)] * len(values), pa.string()))


def pseudonymise_file(
    source: Path, out: Path, key: bytes, results: str, id_column: str = ID_COLUMN
) -> int:
    """Write `out`: the table at `source` with its patient IDs replaced by the results'
    pseudonyms. Refuses a key other than the results', an output that exists (the input
    above all) and any column that identifies patients. Returns the rows written."""
    _kind(out)
    if out.exists() or out.resolve() == source.resolve():
        which = "is the input" if out.resolve() == source.resolve() else "exists"
        raise InputError(f"{out} {which}: give a new file name with --out")
    check_same_key(key_id(key), results, "this key")
    table = pseudonymise_table(read_outside_table(source), id_column, key)
    write_outside_table(table, out)
    return table.num_rows


def distinct_strings(column: pa.ChunkedArray) -> list[str]:
    """The distinct values of a text column, sorted (for messages about a table)."""
    return sorted(str(v) for v in pc.unique(column).to_pylist() if v is not None)
