"""The Parquet slice store: `STORE/slices`, `STORE/rejects` and a small manifest.

This module is the only one that names the store's columns: it builds the rows ingest
writes and answers the reads training, evaluation and scoring need (by column group).

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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from renalflow.tasks.annotations import LesionRow, lesion_flags
from renalflow.tasks.dicom import RejectReason
from renalflow.tasks.errors import StoreError

if TYPE_CHECKING:  # convert.py's type only: the store does not convert anything
    from renalflow.tasks.convert import ConvertedSlice

SLICES = "slices"
REJECTS = "rejects"
LESIONS = "lesions"  # lesion annotations (tasks/annotations.py): SEG objects, a lesions CSV
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
        ("body_part_examined", pa.string()),
        ("image_type", pa.string()),
        ("frame_of_reference_uid", pa.string()),
        ("acquisition_number", pa.int32()),
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

LESION_SCHEMA = pa.schema(
    [
        ("study_instance_uid", pa.string()),
        ("series_instance_uid", pa.string()),
        ("sop_instance_uid", pa.string()),
        ("first_sop_instance_uid", pa.string()),
        ("last_sop_instance_uid", pa.string()),
        ("z_min", pa.float64()),
        ("z_max", pa.float64()),
        ("segment", pa.string()),
        ("source", pa.string()),
        ("source_uri", pa.string()),
        ("ingest_run_id", pa.string()),
        ("annotated_at", pa.timestamp("ms", tz="UTC")),
    ]
)

_SCHEMAS = {SLICES: SLICE_SCHEMA, REJECTS: REJECT_SCHEMA, LESIONS: LESION_SCHEMA}

# Column groups of `slices`, for readers that need part of a row.
SLICE_META_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "z",
    "phase",
    "manufacturer",
    "study_date",
    "cohort",
    "label",
    "preprocess_version",
)
"""What training, evaluation and scoring know about a slice besides its pixels."""

SLICE_ORDER: tuple[str, ...] = (
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "z",
    "sop_instance_uid",
)
"""The one order slices are read in: patient, study, series, position along the body."""

SERIES_COLUMNS: tuple[str, ...] = (
    "slice_thickness",
    "series_description",
    "body_part_examined",
    "image_type",
    "frame_of_reference_uid",
    "acquisition_number",
)
"""What series selection reads besides a slice's identity, z and phase (stores written
before these columns existed read them as null)."""

INVENTORY_COLUMNS: tuple[str, ...] = (
    "source_uri",
    "instance_number",
    *SLICE_META_COLUMNS,
    *SERIES_COLUMNS,
)
"""What the scoring planner reads: everything but the pixels, plus where a slice came
from and what series selection needs."""

_IMAGE_COLUMNS = ("sop_instance_uid", "height", "width", "pixels")


def slice_row(
    source_uri: str,
    converted: ConvertedSlice,
    *,
    cohort: str,
    label: str | None,
    run_id: str,
    version: str,
) -> dict[str, Any]:
    """The `slices` row of a converted file."""
    h = converted.header
    return {
        "source_uri": source_uri,
        "patient_id": h.patient_id,
        "study_instance_uid": h.study_instance_uid,
        "series_instance_uid": h.series_instance_uid,
        "sop_instance_uid": h.sop_instance_uid,
        "instance_number": h.instance_number,
        "z": h.z,
        "phase": h.phase,
        "slice_thickness": h.slice_thickness,
        "pixel_spacing": list(h.pixel_spacing) if h.pixel_spacing else None,
        "manufacturer": h.manufacturer,
        "transfer_syntax": h.transfer_syntax,
        "study_date": h.study_date,
        "series_description": h.series_description,
        "body_part_examined": h.body_part_examined,
        "image_type": h.image_type,
        "frame_of_reference_uid": h.frame_of_reference_uid,
        "acquisition_number": h.acquisition_number,
        "kvp": h.kvp,
        "photometric_interpretation": h.photometric_interpretation,
        "rows": h.rows,
        "columns": h.columns,
        "window_center": converted.window_center,
        "window_width": converted.window_width,
        "height": int(converted.pixels.shape[0]),
        "width": int(converted.pixels.shape[1]),
        "pixels": converted.pixels.tobytes(),
        "cohort": cohort,
        "label": label,
        "ingest_run_id": run_id,
        "preprocess_version": version,
        "ingested_at": now_utc(),
    }


def reject_row(
    source_uri: str,
    code: RejectReason,
    reason: str,
    sop_instance_uid: str | None,
    *,
    cohort: str,
    run_id: str,
    version: str,
) -> dict[str, Any]:
    """The `rejects` row of a file that is not a usable slice, with its reason."""
    return {
        "source_uri": source_uri,
        "reason_code": code.value,
        "reason": reason,
        "sop_instance_uid": sop_instance_uid,
        "cohort": cohort,
        "ingest_run_id": run_id,
        "preprocess_version": version,
        "rejected_at": now_utc(),
    }


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


def store_for(store_uri: str, preprocess_version: str) -> str:
    """The slice store for slices made with `preprocess_version`: `store_uri` itself when
    it does not exist yet or was made that way, else its sibling `STORE.VERSION`, made
    on demand. Models with other preprocessing (another size, window or filter) so get
    slices of their own side by side, and none is ever refused for the first model's."""
    try:
        made_with = read_manifest(store_uri).get("preprocess_version")
    except StoreError:  # no manifest: a new store (storage failures raise their own)
        return store_uri
    if made_with == preprocess_version:
        return store_uri
    return f"{store_uri.rstrip('/')}.{preprocess_version}"


def describe_store(store_uri: str) -> str:
    """A short summary of a slice store: patients, series and slices per label and phase."""
    import duckdb  # 0.16 s that workers importing the store would pay for nothing

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


def read_patients(store_uri: str) -> set[str]:
    """The PatientIDs the store holds slices of."""
    table = read_table(store_uri, SLICES, ["patient_id"])
    return set(table.column("patient_id").to_pylist())


def pixels_to_array(column: pa.ChunkedArray | pa.Array, height: int, width: int) -> np.ndarray:
    """Binary pixel column -> (N, height, width) uint8 without a Python loop."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    if n == 0:
        return np.zeros((0, height, width), dtype=np.uint8)
    if array.null_count:
        raise StoreError("slice store has rows without pixels; re-ingest the affected files")
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + n + 1]
    size = height * width
    if not np.all(np.diff(offsets) == size):
        raise StoreError(
            f"slices in the store are not all {height}x{width}; a store holds one image size "
            "(see its preprocess_version)"
        )
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)
    return data[offsets[0] : offsets[0] + n * size].reshape(n, height, width)


def read_slices(
    store_uri: str,
    *,
    cohorts: list[str] | None = None,
    patients: set[str] | None = None,
    labelled_only: bool = False,
    empty_size: int = 224,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Metadata (SLICE_META_COLUMNS, SERIES_COLUMNS) and uint8 images (N, H, W) of the
    store's slices, filtered by cohort and patient, in SLICE_ORDER, one copy of each SOPInstanceUID.

    With nothing to read, the images are (0, empty_size, empty_size).
    """
    parts = list_parts(store_uri, SLICES)
    if not parts:
        raise StoreError(
            f"no slices in {store_uri}; create the store with `renalflow ingest ARCHIVE "
            "--store STORE --labels labels.csv`"
        )
    fs, _ = open_store(store_uri)
    dataset = pds.dataset(parts, schema=SLICE_SCHEMA, format="parquet", filesystem=fs)
    expression = None
    if cohorts:
        expression = pc.field("cohort").isin(cohorts)
    if patients is not None:
        clause = pc.field("patient_id").isin(sorted(patients))
        expression = clause if expression is None else expression & clause
    if labelled_only:
        clause = pc.field("label").is_valid()
        expression = clause if expression is None else expression & clause
    described = [*SLICE_META_COLUMNS, *SERIES_COLUMNS]
    columns = list(dict.fromkeys([*described, *_IMAGE_COLUMNS]))
    table = dataset.to_table(columns=columns, filter=expression)
    if table.num_rows == 0:
        empty = np.zeros((0, empty_size, empty_size), np.uint8)
        return pd.DataFrame(columns=described), empty
    heights = pc.unique(table.column("height")).to_pylist()
    widths = pc.unique(table.column("width")).to_pylist()
    if len(heights) != 1 or len(widths) != 1:
        raise StoreError(f"store {store_uri} mixes image sizes {heights}x{widths}")
    # One order whatever the store's part files: training shuffles by index, so two
    # stores of the same archive train the same model from the same seed.
    order = pc.sort_indices(table, sort_keys=[(key, "ascending") for key in SLICE_ORDER])
    table = table.take(order)
    meta = table.select(described).to_pandas()
    # Concurrent ingests of the same files can both store a slice: keep one copy.
    unique = ~meta["sop_instance_uid"].duplicated().to_numpy()
    if not unique.all():
        table = table.filter(pa.array(unique))
        meta = meta[unique].reset_index(drop=True)
    meta = with_lesions(store_uri, meta)
    return meta, pixels_to_array(table.column("pixels"), heights[0], widths[0])


def read_part_slices(
    fs: fsspec.AbstractFileSystem, part: str, wanted: list[str]
) -> tuple[list[str], np.ndarray]:
    """The SOPInstanceUIDs and uint8 images of the `wanted` slices of one store part."""
    # One whole-object read (a single GET on object storage), parsed in memory; a
    # part is at most a few tens of MB. Usually every slice of a part is wanted, and
    # then nothing is filtered (no copy of the pixels).
    with fs.open(part, "rb") as handle:
        data = handle.read()
    table = pq.read_table(pa.BufferReader(data), columns=list(_IMAGE_COLUMNS))
    keep = pc.is_in(table.column("sop_instance_uid"), value_set=pa.array(wanted, pa.string()))
    if not pc.all(keep).as_py():
        table = table.filter(keep)
    if table.num_rows != len(set(wanted)):
        raise StoreError(
            f"{posixpath.basename(part)} holds {table.num_rows} of the {len(set(wanted))} "
            "slices asked for; was the store changed during scoring?"
        )
    height = table.column("height")[0].as_py()
    width = table.column("width")[0].as_py()
    uids = table.column("sop_instance_uid").to_pylist()
    return uids, pixels_to_array(table.column("pixels"), height, width)


def write_lesions(store_uri: str, rows: list[LesionRow], run_id: str, part_name: str) -> None:
    """Lesion annotations into `lesions`, as one part named after what they came from
    (written again, not added twice, when the same files or CSV are ingested again)."""
    if not rows:
        return
    stamp = now_utc()
    records = [{**asdict(row), "ingest_run_id": run_id, "annotated_at": stamp} for row in rows]
    write_part(store_uri, LESIONS, records, part_name)


def read_lesions(store_uri: str) -> pd.DataFrame:
    """Every lesion annotation the store holds (LESION_SCHEMA columns)."""
    return read_table(store_uri, LESIONS).to_pandas()


def with_lesions(store_uri: str, meta: pd.DataFrame) -> pd.DataFrame:
    """`meta` with a `lesion` column: True, False, or None where no annotation covers the
    slice's series (tasks.annotations.lesion_flags)."""
    out = meta.copy()
    out["lesion"] = lesion_flags(meta, read_lesions(store_uri))
    return out


def archive_prefix(archive_uri: str) -> str:
    """The archive as the `source_uri` prefix its slices carry in the store."""
    fs, root = fsspec.core.url_to_fs(archive_uri)
    prefix: str = fs.unstrip_protocol(root.rstrip("/"))
    return prefix


def read_inventory(store_uri: str, archive_uri: str, preprocess_version: str) -> pa.Table:
    """INVENTORY_COLUMNS (no pixels) of the store's slices that came from `archive_uri`,
    each with the part file holding it (`part`)."""
    prefix = archive_prefix(archive_uri)
    under = prefix.rstrip("/") + "/"
    fs, _ = open_store(store_uri)
    # Files of this archive whose slice the store already had from another path (a copy,
    # a moved archive, a study in two archives) are duplicates in `rejects`: they count.
    rejects = read_table(store_uri, REJECTS, ["source_uri", "reason_code", "sop_instance_uid"])
    rejects = rejects.filter(
        pc.and_(
            pc.equal(rejects.column("reason_code"), RejectReason.DUPLICATE.value),
            pc.starts_with(rejects.column("source_uri"), under),
        )
    )
    copies = pa.array(rejects.column("sop_instance_uid").to_pylist(), pa.string())
    tables = []
    for part in list_parts(store_uri, SLICES):
        # With the schema: parts written before a column existed read it as null.
        table = pds.dataset(part, schema=SLICE_SCHEMA, format="parquet", filesystem=fs).to_table(
            columns=list(INVENTORY_COLUMNS),
            filter=(pc.field("preprocess_version") == preprocess_version),
        )
        uris = table.column("source_uri")
        keep = pc.or_(pc.equal(uris, prefix), pc.starts_with(uris, under))
        if len(copies):
            keep = pc.or_(keep, pc.is_in(table.column("sop_instance_uid"), value_set=copies))
        table = table.filter(keep)
        if table.num_rows:
            tables.append(table.append_column("part", pa.array([part] * table.num_rows)))
    if not tables:
        empty = SLICE_SCHEMA.empty_table().select(list(INVENTORY_COLUMNS))
        empty = empty.append_column("part", pa.array([], pa.string()))
        return empty.append_column("lesion", pa.array([], pa.bool_()))
    inventory = pa.concat_tables(tables)
    flags = lesion_flags(inventory.select(["series_instance_uid", "sop_instance_uid", "z"])
                         .to_pandas(), read_lesions(store_uri))  # fmt: skip
    return inventory.append_column("lesion", pa.array(flags.tolist(), pa.bool_()))
