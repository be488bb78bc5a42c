"""Frozen extracts: the exact rows behind a paper's table, with what it takes to get the
same bytes again.

`write_extract` runs one SELECT on R as it was at a version of study_votes and writes
OUT/rows.parquet, OUT/rows.csv and OUT/manifest.json: the query, the version of every
table read, the model versions in the rows and what R says about each (profile,
preprocessing, thresholds, selectors, when scored), the versions of renalflow, pyarrow
and DuckDB, and a SHA-256 of each file. `rerun_extract` runs a manifest again, on every
table at the version it recorded, and refuses to call the result the same unless every
file's checksum matches.

Row order is fixed: the rows are sorted by all their columns, left to right (`ORDER BY
ALL`), whatever the query's own order; put the columns to sort by first. The files are
written with explicit options, and the manifest has no wall-clock time in it, so a rerun
with the same versions writes the same bytes, manifest included.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from renalflow.tasks.errors import InputError, StoreError
from renalflow.tasks.query import run_query
from renalflow.tasks.results import STUDY_VOTES, read_pinned

MANIFEST = "manifest.json"
ROWS_PARQUET = "rows.parquet"
ROWS_CSV = "rows.csv"
MANIFEST_FORMAT = 1

# Parquet written the same way every time (pyarrow's defaults may change between versions).
_PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
    "data_page_version": "1.0",
    "row_group_size": 1_000_000,
}


def ordered_sql(sql: str) -> str:
    """The query with its rows in one fixed order: sorted by every column."""
    body = sql.strip().rstrip(";").strip()
    return f"select * from (\n{body}\n) as extract order by all"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not empty: give a new folder with --out")


def _write_rows(table: pa.Table, out: Path) -> dict[str, dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / ROWS_PARQUET, **_PARQUET_OPTIONS)
    pcsv.write_csv(table, out / ROWS_CSV, write_options=pcsv.WriteOptions(quoting_style="needed"))
    return {
        name: {"sha256": _sha256(out / name), "bytes": (out / name).stat().st_size}
        for name in (ROWS_PARQUET, ROWS_CSV)
    }


def _model_cards(studies: pa.Table, models: set[str] | None) -> list[dict[str, Any]]:
    """What R records about each model version (of the rows, or all of R's)."""
    frame = studies.to_pandas()
    if models is not None:
        frame = frame[frame["model_version"].isin(models)]
    cards = []
    for model, rows in frame.groupby("model_version", sort=True):
        scored = rows["scored_at"]
        cards.append(
            {
                "model_version": str(model),
                "model_profile": _one(rows["model_profile"]),
                "preprocess_versions": _all(rows["preprocess_version"]),
                "image_thresholds": sorted({float(v) for v in rows["image_threshold"]}),
                "vote_thresholds": sorted({float(v) for v in rows["vote_threshold"]}),
                "selection_sources": _all(rows["selection_source"]),
                "selector_versions": _all(rows["selector_version"]),
                "studies": len(rows),
                "first_scored_at": scored.min().isoformat(),
                "last_scored_at": scored.max().isoformat(),
            }
        )
    return cards


def _all(values: Any) -> list[str]:
    return sorted({str(v) for v in values.dropna()})


def _one(values: Any) -> str | None:
    found = _all(values)
    return ",".join(found) if found else None


def _versions(renalflow_version: str) -> dict[str, str]:
    return {
        "renalflow": renalflow_version,
        "pyarrow": pa.__version__,
        "duckdb": version("duckdb"),
    }


def _run(
    results: str,
    sql: str,
    as_of: int | datetime | None,
    versions: dict[str, int | None] | None = None,
) -> tuple[pa.Table, dict[str, int | None], pa.Table]:
    pinned = read_pinned(results, as_of, versions)
    table = run_query(results, ordered_sql(sql), tables=pinned.tables)
    return table, pinned.versions, pinned.tables[STUDY_VOTES]


def write_extract(
    results: str,
    sql: str,
    out: Path,
    renalflow_version: str,
    as_of: int | datetime | None = None,
) -> dict[str, Any]:
    """Run `sql` on R at `as_of` (default: its latest version, recorded) and write the
    rows and their manifest to the new folder `out`. Returns the manifest."""
    _check_out(out)
    table, versions, studies = _run(results, sql, as_of)
    models = (
        {str(v) for v in table.column("model_version").to_pylist() if v is not None}
        if "model_version" in table.column_names
        else None
    )
    manifest = {
        "format": MANIFEST_FORMAT,
        "query": sql,
        "ordered_query": ordered_sql(sql),
        "results": results,
        "as_of": versions[STUDY_VOTES],
        "table_versions": versions,
        "models": _model_cards(studies, models),
        "software": _versions(renalflow_version),
        "rows": table.num_rows,
        "columns": [{"name": f.name, "type": str(f.type)} for f in table.schema],
        "files": _write_rows(table, out),
    }
    _write_manifest(manifest, out)
    return manifest


def _write_manifest(manifest: dict[str, Any], out: Path) -> None:
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not a readable extract manifest: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path} is not a renalflow extract manifest (format {MANIFEST_FORMAT})")
    return manifest


def rerun_extract(
    manifest_path: Path, out: Path, renalflow_version: str, results: str | None = None
) -> dict[str, Any]:
    """Run the extract of `manifest_path` again into the new folder `out`: its query on
    each table at the version it recorded (R at the manifest's location unless `results`
    says where it is now). Raises StoreError when a file's bytes differ."""
    manifest = read_manifest(manifest_path)
    _check_out(out)
    results = results or str(manifest["results"])
    recorded = manifest["table_versions"]
    table, _, _ = _run(results, str(manifest["query"]), None, recorded)
    files = _write_rows(table, out)
    rerun = {**manifest, "results": manifest["results"], "files": files}
    rerun["software"] = _versions(renalflow_version)
    _write_manifest(rerun, out)
    if files != manifest["files"]:
        changed = [name for name in files if files[name] != manifest["files"].get(name)]
        raise StoreError(
            f"the rerun wrote {', '.join(changed)} with other bytes than the extract "
            f"(software then {manifest['software']}, now {rerun['software']}); the new "
            f"files and manifest are in {out}"
        )
    return rerun
