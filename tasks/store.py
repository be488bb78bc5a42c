"""The Parquet slice store: `STORE/slices`, `STORE/rejects` and a small manifest.

One `store_uri` works through fsspec for `file://`, `s3://` and `memory://`. Every
part file is written under a hidden temporary name and then moved into place, so a
reader (or a rerun after a crash) only ever sees whole parts. A part holds one
batch, written as one row group for fast sequential reads.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from renalflow.tasks.errors import StoreError

SLICES = "slices"
REJECTS = "rejects"
STAGING = "_staging"  # converted batches waiting to be committed (never read as data)
MANIFEST = "_renalflow_store.json"

SLICE_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("patient_id", pa.string()),
        ("study_instance_uid", pa.string()),
        ("series_instance_uid", pa.string()),
        ("sop_instance_uid", pa.string()),
        ("instance_number", pa.int32()),
        ("z", pa.float64()),
        ("phase", pa.string()),
        ("slice_thickness", pa.float32()),
        ("pixel_spacing", pa.list_(pa.float32(), 2)),
        ("manufacturer", pa.string()),
        ("transfer_syntax", pa.string()),
        ("study_date", pa.string()),
        ("series_description", pa.string()),
        ("kvp", pa.float32()),
        ("photometric_interpretation", pa.string()),
        ("rows", pa.int32()),
        ("columns", pa.int32()),
        ("window_center", pa.float32()),
        ("window_width", pa.float32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("pixels", pa.binary()),
        ("cohort", pa.string()),
        ("label", pa.string()),
        ("ingest_run_id", pa.string()),
        ("preprocess_version", pa.string()),
        ("ingested_at", pa.timestamp("ms", tz="UTC")),
    ]
)

REJECT_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("reason_code", pa.string()),
        ("reason", pa.string()),
        ("sop_instance_uid", pa.string()),
        ("cohort", pa.string()),
        ("ingest_run_id", pa.string()),
        ("preprocess_version", pa.string()),
        ("rejected_at", pa.timestamp("ms", tz="UTC")),
    ]
)

_SCHEMAS = {SLICES: SLICE_SCHEMA, REJECTS: REJECT_SCHEMA}


def open_store(store_uri: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and root path behind a store URI (local path, file://, s3://, memory://)."""
    fs, root = fsspec.core.url_to_fs(store_uri, **storage_options)
    return fs, root.rstrip("/") or "/"


def now_utc() -> datetime:
    return datetime.now(UTC)


def _rename(fs: fsspec.AbstractFileSystem, source: str, final: str) -> None:
    """Atomic move: a rename on local disk; object stores have no rename, but a single
    whole-object copy is atomic, so copy then delete."""
    if isinstance(fs, LocalFileSystem):
        fs.mv(source, final)
    else:
        fs.copy(source, final)
        fs.rm(source)


def write_part(
    store_uri: str, table_name: str, rows: list[dict[str, Any]] | pa.Table, part_name: str
) -> str | None:
    """Write `rows` (dicts or an Arrow table) as one Parquet part of `table_name`,
    atomically; returns its path, or None when there is nothing to write.

    The part is written under a hidden temporary name in the same folder and then
    moved into place: a crash leaves either the whole part or no part.
    """
    if len(rows) == 0:
        return None
    schema = _SCHEMAS[table_name]
    if isinstance(rows, pa.Table):
        table = rows.cast(schema)
    else:
        table = pa.Table.from_pylist(rows, schema=schema)
    fs, root = open_store(store_uri)
    folder = posixpath.join(root, table_name)
    fs.makedirs(folder, exist_ok=True)
    final = posixpath.join(folder, f"{part_name}.parquet")
    temporary = posixpath.join(folder, f".{part_name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with fs.open(temporary, "wb") as handle:
            pq.write_table(table, handle, row_group_size=table.num_rows, compression="zstd")
        _rename(fs, temporary, final)
    except OSError as err:
        raise StoreError(
            f"could not write {table_name} part {final}: {err}. Check that the store is "
            "writable and has free space; nothing partial was left behind"
        ) from err
    return final


def move_part(source: str, store_uri: str, table_name: str, part_name: str) -> str:
    """Commit a staged part file into `table_name` of the store (rename, or one copy)."""
    fs, root = open_store(store_uri)
    folder = posixpath.join(root, table_name)
    fs.makedirs(folder, exist_ok=True)
    final = posixpath.join(folder, f"{part_name}.parquet")
    try:
        _rename(fs, source, final)
    except OSError as err:
        raise StoreError(f"could not commit {source} to {final}: {err}") from err
    return final


def read_part(path: str) -> pa.Table:
    fs, _ = fsspec.core.url_to_fs(path)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle)


def remove_part(path: str) -> None:
    fs, _ = fsspec.core.url_to_fs(path)
    fs.rm(path)


def clear_staging(store_uri: str, run_id: str | None = None, older_than_s: float = 3600) -> int:
    """Remove staged batches that will never be committed; returns how many files.

    With `run_id`, that run's own staging folder (at the end of a run). Without, the
    folders of other runs that have staged nothing for `older_than_s` seconds: runs that
    crashed. A run still working stages a batch every few seconds, so concurrent runs
    never remove each other's batches.
    """
    fs, root = open_store(store_uri)
    folder = posixpath.join(root, STAGING)
    fs.invalidate_cache(folder)
    if not fs.exists(folder):
        return 0
    removed = 0
    now = time.time()
    for run_folder in fs.ls(folder, detail=False):
        name = posixpath.basename(run_folder.rstrip("/"))
        files = [p for p in fs.find(run_folder) if p.endswith(".parquet") or p.endswith(".tmp")]
        if run_id is not None:
            if name != run_id:
                continue
        elif files and now - max(_mtime(fs, p) for p in files) < older_than_s:
            continue
        fs.rm(run_folder, recursive=True)
        removed += len(files)
    return removed


def _mtime(fs: fsspec.AbstractFileSystem, path: str) -> float:
    info = fs.info(path)
    value = info.get("mtime", info.get("LastModified", info.get("created")))
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if value is not None else 0.0


def list_parts(store_uri: str, table_name: str) -> list[str]:
    """Committed part files of a table (temporary files are never listed)."""
    fs, root = open_store(store_uri)
    folder = posixpath.join(root, table_name)
    # Parts are written by other processes (workers): never trust a cached listing.
    fs.invalidate_cache(folder)
    if not fs.exists(folder):
        return []
    return sorted(
        p
        for p in fs.find(folder)
        if p.endswith(".parquet") and not posixpath.basename(p).startswith(".")
    )


def read_table(store_uri: str, table_name: str, columns: list[str] | None = None) -> pa.Table:
    """Read a whole table (or some columns) of the store; empty with the schema if none yet."""
    schema = _SCHEMAS[table_name]
    parts = list_parts(store_uri, table_name)
    if not parts:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    fs, _ = open_store(store_uri)
    dataset = pds.dataset(parts, schema=schema, format="parquet", filesystem=fs)
    return dataset.to_table(columns=columns)


@dataclass
class Ledger:
    """What the store already holds: every source URI, and which file each SOP came from."""

    source_uris: set[str] = field(default_factory=set)
    sop_sources: dict[str, str] = field(default_factory=dict)


def read_ledger(store_uri: str) -> Ledger:
    """Read only the identity columns of both tables (cheap even for large stores)."""
    slices = read_table(store_uri, SLICES, ["source_uri", "sop_instance_uid"])
    rejects = read_table(store_uri, REJECTS, ["source_uri"])
    ledger = Ledger()
    uris = slices.column("source_uri").to_pylist()
    sops = slices.column("sop_instance_uid").to_pylist()
    ledger.source_uris.update(uris)
    ledger.source_uris.update(rejects.column("source_uri").to_pylist())
    ledger.sop_sources.update(zip(sops, uris, strict=True))
    return ledger


def check_manifest(store_uri: str, preprocess: dict[str, Any], version: str) -> None:
    """Create the store's manifest, or refuse a store made with other preprocessing.

    Mixing preprocessing versions in one store would train and score on images that
    look different for no clinical reason, so it is refused rather than allowed.
    """
    fs, root = open_store(store_uri)
    path = posixpath.join(root, MANIFEST)
    if fs.exists(path):
        with fs.open(path, "rb") as handle:
            manifest = json.loads(handle.read())
        stored = manifest.get("preprocess_version")
        if stored != version:
            raise StoreError(
                f"store {store_uri} holds slices made with preprocess_version {stored} "
                f"({manifest.get('preprocess')}), but this run's preprocessing is {version} "
                f"({preprocess}). Use a new --store for the new preprocessing, or rerun with "
                "the store's settings"
            )
        return
    fs.makedirs(root, exist_ok=True)
    # Both tables exist from the start (empty, with their schema), so a query over a
    # store whose archive had no rejects still finds `rejects`.
    for table_name, schema in _SCHEMAS.items():
        folder = posixpath.join(root, table_name)
        fs.makedirs(folder, exist_ok=True)
        with fs.open(posixpath.join(folder, "part-00000000-empty.parquet"), "wb") as handle:
            pq.write_table(schema.empty_table(), handle)
    payload = {
        "format": "renalflow slice store",
        "format_version": 1,
        "preprocess_version": version,
        "preprocess": preprocess,
        "created_at": now_utc().isoformat(),
    }
    with fs.open(path, "wb") as handle:
        handle.write(json.dumps(payload, indent=2).encode())


def read_manifest(store_uri: str) -> dict[str, Any]:
    fs, root = open_store(store_uri)
    path = posixpath.join(root, MANIFEST)
    if not fs.exists(path):
        raise StoreError(
            f"{store_uri} is not a renalflow slice store (no {MANIFEST}); "
            "create one with `renalflow ingest ARCHIVE --store STORE`"
        )
    with fs.open(path, "rb") as handle:
        return dict(json.loads(handle.read()))


def describe_store(store_uri: str) -> str:
    """A short summary of a slice store: patients, series and slices per label and phase."""
    import duckdb

    table = read_table(
        store_uri, SLICES, columns=["label", "phase", "patient_id", "series_instance_uid"]
    )
    con = duckdb.connect()
    con.register("slices", table)
    result = con.execute(
        """
        select coalesce(label, '(unlabelled)') as label, phase,
               count(distinct patient_id) as patients,
               count(distinct series_instance_uid) as series,
               count(*) as slices
        from slices group by all order by label, phase
        """
    ).fetchall()
    lines = [f"  {'label':<13} {'phase':<12} {'patients':>8} {'series':>7} {'slices':>7}"]
    for label, phase, patients, series, slices in result:
        lines.append(f"  {label:<13} {phase:<12} {patients:>8} {series:>7} {slices:>7}")
    return "\n".join(lines)
