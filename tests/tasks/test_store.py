from pathlib import Path

import pyarrow.parquet as pq
import pytest

from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.convert import convert_file
from renalflow.tasks.dicom import RejectReason
from renalflow.tasks.errors import StoreError
from renalflow.tasks.store import (
    INVENTORY_COLUMNS,
    REJECT_SCHEMA,
    REJECTS,
    SERIES_COLUMNS,
    SLICE_META_COLUMNS,
    SLICE_ORDER,
    SLICE_SCHEMA,
    SLICES,
    check_manifest,
    list_parts,
    now_utc,
    open_store,
    read_ledger,
    read_manifest,
    read_part_slices,
    read_slices,
    read_table,
    reject_row,
    slice_row,
    write_part,
)
from tests.factory import make_ct, save


def _reject(uri: str) -> dict:
    return {
        "source_uri": uri,
        "reason_code": "not_dicom",
        "reason": "not a DICOM file",
        "sop_instance_uid": None,
        "cohort": "development",
        "ingest_run_id": "run",
        "preprocess_version": "v",
        "rejected_at": now_utc(),
    }


def test_write_part_is_atomic_and_leaves_no_temporary_files(tmp_path: Path):
    store = str(tmp_path / "store")
    path = write_part(store, REJECTS, [_reject("file:///a"), _reject("file:///b")], "part-1")
    assert path is not None and path.endswith("rejects/part-1.parquet")
    assert [p.name for p in (tmp_path / "store" / "rejects").iterdir()] == ["part-1.parquet"]
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    assert read_table(store, REJECTS).num_rows == 2


def test_nothing_is_written_for_an_empty_batch(tmp_path: Path):
    assert write_part(str(tmp_path), REJECTS, [], "part-empty") is None
    assert list_parts(str(tmp_path), REJECTS) == []


def test_readers_ignore_temporary_parts_left_by_a_crash(tmp_path: Path):
    store = str(tmp_path)
    write_part(store, REJECTS, [_reject("file:///a")], "part-1")
    (tmp_path / "rejects" / ".part-2.abcd.tmp").write_bytes(b"half a parquet file")
    assert read_table(store, REJECTS).num_rows == 1
    assert read_ledger(store).source_uris == {"file:///a"}


def test_empty_store_reads_as_empty_tables(tmp_path: Path):
    assert read_table(str(tmp_path), "slices").num_rows == 0
    assert read_ledger(str(tmp_path)).source_uris == set()


def test_memory_filesystem_store_round_trip():
    store = "memory://renalflow-test-store"
    write_part(store, REJECTS, [_reject("memory://x")], "part-1")
    assert read_table(store, REJECTS).column("source_uri").to_pylist() == ["memory://x"]


def test_manifest_refuses_other_preprocessing(tmp_path: Path):
    store = str(tmp_path)
    check_manifest(store, {"window_width": 400}, "aaaa")
    check_manifest(store, {"window_width": 400}, "aaaa")  # same settings: fine
    assert read_manifest(store)["preprocess_version"] == "aaaa"
    with pytest.raises(StoreError, match="holds slices made with preprocess_version aaaa"):
        check_manifest(store, {"window_width": 350}, "bbbb")


def test_reading_a_folder_that_is_not_a_store_explains(tmp_path: Path):
    with pytest.raises(StoreError, match="not a renalflow slice store"):
        read_manifest(str(tmp_path))


def test_new_store_has_both_tables_for_duckdb_and_pyarrow(tmp_path: Path):
    import duckdb
    import pyarrow.dataset as pds

    check_manifest(str(tmp_path), {}, "v1")
    for table in ("slices", "rejects"):
        count = duckdb.sql(f"select count(*) from '{tmp_path}/{table}/*.parquet'").fetchall()
        assert count == [(0,)]
        assert pds.dataset(str(tmp_path / table)).count_rows() == 0
    assert "pixels" in read_table(str(tmp_path), "slices").schema.names


def test_rows_built_by_the_store_have_exactly_its_columns(tmp_path: Path):
    converted = convert_file(str(save(make_ct(), tmp_path / "a.dcm")), PreprocessConfig())
    row = slice_row("file:///a.dcm", converted, cohort="c", label=None, run_id="r", version="v")
    assert list(row) == SLICE_SCHEMA.names
    reject = reject_row(
        "file:///b", RejectReason.NOT_DICOM, "not DICOM", None, cohort="c", run_id="r", version="v"
    )
    assert list(reject) == REJECT_SCHEMA.names


def test_column_groups_name_columns_of_the_slices_table():
    names = set(SLICE_SCHEMA.names)
    assert set(SLICE_META_COLUMNS) <= names and set(SLICE_ORDER) <= names
    assert set(INVENTORY_COLUMNS) <= names and "pixels" not in INVENTORY_COLUMNS


def _store_of_two_slices(tmp_path: Path) -> tuple[str, list[str]]:
    store = str(tmp_path / "store")
    rows = []
    for i, z in enumerate(("5.0", "-5.0")):
        ds = make_ct(
            StudyInstanceUID="1.2.826.0.1.9",
            SeriesInstanceUID="1.2.826.0.1.9.1",
            ImagePositionPatient=["0", "0", z],
        )
        converted = convert_file(str(save(ds, tmp_path / f"{i}.dcm")), PreprocessConfig())
        rows.append(
            slice_row(
                f"file:///{i}.dcm", converted, cohort="c", label="benign", run_id="r", version="v"
            )
        )
    write_part(store, SLICES, [*rows, rows[0]], "part-1")  # a slice stored twice
    return store, [r["sop_instance_uid"] for r in rows]


def test_read_slices_gives_one_copy_of_each_slice_in_order(tmp_path: Path):
    store, uids = _store_of_two_slices(tmp_path)
    meta, images = read_slices(store)
    assert meta["sop_instance_uid"].tolist() == uids[::-1]  # ordered by z
    # lesion: from the `lesions` table
    assert list(meta.columns) == [*SLICE_META_COLUMNS, *SERIES_COLUMNS, "lesion"]
    assert images.shape == (2, 224, 224)
    empty, none = read_slices(store, cohorts=["other"], empty_size=32)
    assert empty.empty and none.shape == (0, 32, 32)


def test_reading_slices_a_part_does_not_hold_explains(tmp_path: Path):
    store, uids = _store_of_two_slices(tmp_path)
    fs, _ = open_store(store)
    (part,) = list_parts(store, SLICES)
    with pytest.raises(StoreError, match="changed during scoring"):
        read_part_slices(fs, part, [uids[1], "9.9.9"])


def test_a_store_for_another_preprocessing_is_its_sibling(tmp_path: Path):
    from renalflow.tasks.config import PreprocessConfig
    from renalflow.tasks.store import store_for

    store = str(tmp_path / "store")
    made, other = PreprocessConfig(output_size=64), PreprocessConfig(output_size=48)
    assert store_for(store, made.version) == store  # none yet: this one
    check_manifest(store, made.to_dict(), made.version)
    assert store_for(store, made.version) == store
    assert store_for(store + "/", other.version) == f"{store}.{other.version}"
