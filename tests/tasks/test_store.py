from pathlib import Path

import pyarrow.parquet as pq
import pytest

from renalflow.tasks.errors import StoreError
from renalflow.tasks.store import (
    REJECTS,
    check_manifest,
    list_parts,
    now_utc,
    read_ledger,
    read_manifest,
    read_table,
    write_part,
)


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
