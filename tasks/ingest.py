"""Batched ingest work: discover files, scan headers, plan batches, convert and write.

Each function works on a batch of files so that a 100,000-file archive becomes a few
hundred units of work, and every file of a batch ends up in exactly one of the two
tables: `slices` or `rejects`.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tasks.config import PreprocessConfig
from tasks.convert import ConvertedSlice, convert_file
from tasks.dicom import RejectedFile, RejectReason, SliceHeader, read_dataset, read_header
from tasks.errors import InputError
from tasks.store import REJECTS, SLICES, Ledger, now_utc, write_part

LABELS = ("benign", "malignant")


@dataclass(frozen=True)
class ScannedFile:
    """A file whose header passed the checks, waiting to be decoded."""

    source_uri: str
    header: SliceHeader


@dataclass
class BatchReport:
    """What one batch did; small enough to travel back from a worker."""

    n_files: int = 0
    n_slices: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    worker: str = ""

    @property
    def n_rejects(self) -> int:
        return sum(self.rejects.values())


@dataclass
class Reject:
    source_uri: str
    code: RejectReason
    reason: str
    sop_instance_uid: str | None = None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def check_archive(archive_uri: str) -> None:
    """Raise `InputError` unless `archive_uri` names an existing file or folder."""
    fs, root = fsspec.core.url_to_fs(archive_uri)
    if not fs.exists(root):
        raise InputError(
            f"archive {archive_uri} does not exist; give the folder that holds the DICOM "
            "files (or an s3:// URI)"
        )


def discover_files(archive_uri: str) -> list[str]:
    """Every file under `archive_uri` (local path or fsspec URI), as sorted full URIs.

    Nothing is skipped by name: junk files are listed too, so they can be accounted
    for as rejects rather than silently ignored.
    """
    check_archive(archive_uri)
    fs, root = fsspec.core.url_to_fs(archive_uri)
    if fs.isfile(root):
        paths = [root]
    else:
        paths = fs.find(root)
    return sorted(fs.unstrip_protocol(p) for p in paths)


def chunk(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


def _open(source_uri: str, *, whole: bool) -> IO[bytes] | str:
    """A local path (fastest for pydicom) or an in-memory copy of a remote object."""
    fs, path = fsspec.core.url_to_fs(source_uri)
    if isinstance(fs, LocalFileSystem):
        return str(path)
    if whole:
        return io.BytesIO(fs.cat_file(path))
    return fs.open(path, "rb", block_size=256 * 1024)


def _reject_row(reject: Reject, cohort: str, run_id: str, version: str) -> dict[str, Any]:
    return {
        "source_uri": reject.source_uri,
        "reason_code": reject.code.value,
        "reason": reject.reason,
        "sop_instance_uid": reject.sop_instance_uid,
        "cohort": cohort,
        "ingest_run_id": run_id,
        "preprocess_version": version,
        "rejected_at": now_utc(),
    }


def write_rejects(
    store_uri: str, rejects: list[Reject], cohort: str, run_id: str, version: str, part: str
) -> None:
    rows = [_reject_row(r, cohort, run_id, version) for r in rejects]
    write_part(store_uri, REJECTS, rows, part)


def _as_reject(source_uri: str, err: Exception) -> Reject:
    if isinstance(err, RejectedFile):
        return Reject(source_uri, err.code, err.reason)
    text = str(err) or type(err).__name__
    return Reject(source_uri, RejectReason.UNREADABLE, f"cannot read the file: {text}")


def scan_files(
    store_uri: str,
    source_uris: list[str],
    config: PreprocessConfig,
    cohort: str,
    run_id: str,
) -> tuple[list[ScannedFile], BatchReport]:
    """Read headers only; write the files that are not usable CT slices to `rejects`.

    Transient I/O errors (network, throttling) propagate so the caller can retry the
    batch; anything wrong with a file itself becomes a reject.
    """
    started = time.perf_counter()
    accepted: list[ScannedFile] = []
    rejects: list[Reject] = []
    for uri in source_uris:
        try:
            ds = read_dataset(_open(uri, whole=False), with_pixels=False)
            accepted.append(ScannedFile(uri, read_header(ds, config)))
        except (TimeoutError, ConnectionError):
            raise
        except Exception as err:  # one bad file never fails the batch
            rejects.append(_as_reject(uri, err))
    write_rejects(
        store_uri,
        rejects,
        cohort,
        run_id,
        config.version,
        f"scan-{run_id[:8]}-{uuid.uuid4().hex[:12]}",
    )
    report = BatchReport(
        n_files=len(source_uris),
        rejects=Counter(r.code.value for r in rejects),
        seconds=time.perf_counter() - started,
        worker=worker_name(),
    )
    return accepted, report


@dataclass
class Plan:
    """The result of planning: batches to convert, duplicates to reject, files held back."""

    batches: list[list[ScannedFile]]
    duplicates: list[Reject]
    held: list[ScannedFile]


def plan_batches(
    scanned: list[ScannedFile],
    ledger: Ledger,
    batch_size: int,
    claimed: set[str] | None = None,
) -> Plan:
    """Group files by series into batches of about `batch_size`, resolving duplicates.

    A SOPInstanceUID already in the store makes the file a duplicate. Within this
    run, the first file by URI wins and the others are held back: they become
    duplicates only once the winner is stored, so a damaged copy never takes a good
    copy of the same image down with it. `claimed` carries the SOPInstanceUIDs that
    earlier plans of the same run already sent for decoding (updated in place).
    """
    claimed = set() if claimed is None else claimed
    duplicates: list[Reject] = []
    held: list[ScannedFile] = []
    winners: dict[str, ScannedFile] = {}
    for item in sorted(scanned, key=lambda s: s.source_uri):
        sop = item.header.sop_instance_uid
        if sop in ledger.sop_sources:
            duplicates.append(
                Reject(
                    item.source_uri,
                    RejectReason.DUPLICATE,
                    f"duplicate of SOPInstanceUID {sop} (already stored from "
                    f"{ledger.sop_sources[sop]})",
                    sop,
                )
            )
        elif sop in winners or sop in claimed:
            held.append(item)
        else:
            winners[sop] = item
            claimed.add(sop)
    by_series: dict[str, list[ScannedFile]] = defaultdict(list)
    for item in winners.values():
        by_series[item.header.series_instance_uid].append(item)
    batches: list[list[ScannedFile]] = []
    current: list[ScannedFile] = []
    for series_uid in sorted(by_series):
        series = sorted(
            by_series[series_uid],
            key=lambda s: (s.header.z if s.header.z is not None else 0.0, s.source_uri),
        )
        # Keep a series in one batch when it fits; split long series, never merge past size.
        if current and len(current) + len(series) > batch_size:
            batches.append(current)
            current = []
        for part in chunk(series, batch_size):
            if len(part) == batch_size:
                batches.append(part)
            else:
                current.extend(part)
    if current:
        batches.append(current)
    return Plan(batches=batches, duplicates=duplicates, held=held)


def _slice_row(
    source_uri: str,
    converted: ConvertedSlice,
    cohort: str,
    label: str | None,
    run_id: str,
    version: str,
) -> dict[str, Any]:
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


def convert_files(
    store_uri: str,
    items: list[ScannedFile],
    config: PreprocessConfig,
    cohort: str,
    labels: dict[str, str],
    run_id: str,
) -> BatchReport:
    """Decode and preprocess a batch; write one `slices` part and one `rejects` part."""
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    for item in items:
        uri = item.source_uri
        try:
            converted = convert_file(_open(uri, whole=True), config, item.header)
        except (TimeoutError, ConnectionError):
            raise
        except Exception as err:  # one bad file never fails the batch
            rejects.append(_as_reject(uri, err))
            continue
        label = labels.get(converted.header.patient_id)
        rows.append(_slice_row(uri, converted, cohort, label, run_id, config.version))
    part = f"part-{run_id[:8]}-{uuid.uuid4().hex[:12]}"
    # Slices first: if the process dies between the two writes, the rejected files
    # are simply found pending (and rejected again) on the next run.
    write_part(store_uri, SLICES, rows, part)
    write_rejects(store_uri, rejects, cohort, run_id, config.version, part)
    return BatchReport(
        n_files=len(items),
        n_slices=len(rows),
        rejects=Counter(r.code.value for r in rejects),
        seconds=time.perf_counter() - started,
        worker=worker_name(),
    )


def read_labels(labels_uri: str) -> dict[str, str]:
    """Read `patient_id,label[,histology]`; labels must be `benign` or `malignant`."""
    try:
        with fsspec.open(labels_uri, "rt", newline="") as handle:
            text = handle.read()
    except FileNotFoundError as err:
        raise InputError(f"labels file {labels_uri} does not exist") from err
    reader = csv.DictReader(io.StringIO(text))
    fields = set(reader.fieldnames or [])
    if not {"patient_id", "label"} <= fields:
        raise InputError(
            f"labels file {labels_uri} needs the columns patient_id,label "
            f"(found: {', '.join(sorted(fields)) or 'none'})"
        )
    labels: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        patient = (row.get("patient_id") or "").strip()
        label = (row.get("label") or "").strip().lower()
        if not patient:
            raise InputError(f"{labels_uri} line {line}: empty patient_id")
        if label not in LABELS:
            raise InputError(
                f"{labels_uri} line {line}: label {row.get('label')!r} for patient {patient} "
                "must be 'benign' or 'malignant'"
            )
        if patient in labels and labels[patient] != label:
            raise InputError(
                f"{labels_uri} line {line}: patient {patient} is labelled both "
                f"{labels[patient]} and {label}"
            )
        labels[patient] = label
    return labels
