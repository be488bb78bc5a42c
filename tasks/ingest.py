"""Batched ingest work: discover files, group them, convert in one pass, commit.

Each function works on a batch of files so that a 100,000-file archive becomes a few
hundred units of work, and every file of a batch ends up in exactly one of the two
tables: `slices` or `rejects`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import socket
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from renalflow.tasks.annotations import AnnotationFound, LesionRow, read_lesions_csv
from renalflow.tasks.config import Label, PreprocessConfig
from renalflow.tasks.convert import ConvertedSlice, convert_file
from renalflow.tasks.dicom import RejectedFile, RejectReason
from renalflow.tasks.errors import InputError
from renalflow.tasks.store import (
    REJECTS,
    SLICES,
    STAGING,
    move_part,
    read_part,
    reject_row,
    remove_part,
    slice_row,
    write_lesions,
    write_part,
)


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


def _open(source_uri: str) -> IO[bytes] | str:
    """A local path (fastest for pydicom) or an in-memory copy of a remote object."""
    fs, path = fsspec.core.url_to_fs(source_uri)
    if isinstance(fs, LocalFileSystem):
        return str(path)
    return io.BytesIO(fs.cat_file(path))


def write_rejects(
    store_uri: str, rejects: list[Reject], cohort: str, run_id: str, version: str, part: str
) -> None:
    rows = [
        reject_row(
            r.source_uri,
            r.code,
            r.reason,
            r.sop_instance_uid,
            cohort=cohort,
            run_id=run_id,
            version=version,
        )
        for r in rejects
    ]
    write_part(store_uri, REJECTS, rows, part)


def quarantine(
    store_uri: str, source_uri: str, attempts: int, cohort: str, run_id: str, version: str
) -> None:
    """Reject a file whose conversion killed the worker process on every attempt."""
    reason = (
        f"the worker process converting this file died {attempts} times (out of memory, "
        "or a crash inside a decoder); quarantined so the rest of the archive is ingested"
    )
    digest = hashlib.sha256(source_uri.encode()).hexdigest()[:12]
    reject = Reject(source_uri, RejectReason.CRASHED_WORKER, reason)
    write_rejects(store_uri, [reject], cohort, run_id, version, f"crash-{run_id[:8]}-{digest}")


FILE_ERRORS: tuple[type[Exception], ...] = (
    RejectedFile,
    # What pydicom raises for a malformed value in an element renalflow reads.
    ValueError,
    KeyError,
    IndexError,
    EOFError,
    struct.error,
)
"""The errors a file itself can cause; everything else is a bug and fails loudly."""


def ingest_lesions_csv(store_uri: str, lesions_uri: str, run_id: str) -> int:
    """The lesion ranges of a lesions CSV into the store's `lesions` (one part per CSV
    content: ingesting the same file again replaces its rows, never doubles them)."""
    rows = read_lesions_csv(lesions_uri)
    with fsspec.open(lesions_uri, "rb") as handle:
        digest = hashlib.sha256(lesions_uri.encode() + handle.read()).hexdigest()[:12]
    write_lesions(store_uri, rows, run_id, f"csv-{digest}")
    return len(rows)


def as_reject(source_uri: str, err: Exception) -> Reject:
    """The reject row for a file that failed conversion, with its reason."""
    if isinstance(err, RejectedFile):
        return Reject(source_uri, err.code, err.reason)
    text = str(err) or type(err).__name__
    return Reject(source_uri, RejectReason.UNREADABLE, f"cannot read the file: {text}")


def group_files(source_uris: list[str], batch_size: int) -> list[list[str]]:
    """Batches of at most `batch_size` files that keep each folder together when it fits.

    Archives store a series per folder almost everywhere, so grouping by folder groups by
    series without reading a single header; a folder larger than a batch is split.
    """
    folders: dict[str, list[str]] = defaultdict(list)
    for uri in sorted(source_uris):
        folders[uri.rsplit("/", 1)[0]].append(uri)
    batches: list[list[str]] = []
    current: list[str] = []
    for folder in sorted(folders):
        files = folders[folder]
        if current and len(current) + len(files) > batch_size:
            batches.append(current)
            current = []
        for part in chunk(files, batch_size):
            if len(part) == batch_size:
                batches.append(part)
            else:
                current.extend(part)
    if current:
        batches.append(current)
    return batches


@dataclass
class StagedBatch:
    """A converted batch: its slices wait in a staged part until the flow commits them."""

    staged_part: str | None
    part_name: str
    sops: list[tuple[str, str]]  # (sop_instance_uid, source_uri) of the staged rows
    report: BatchReport


def staging_folder(store_uri: str, run_id: str) -> str:
    return f"{store_uri.rstrip('/')}/{STAGING}/{run_id}"


def convert_files(
    store_uri: str,
    source_uris: list[str],
    config: PreprocessConfig,
    cohort: str,
    labels: dict[str, str],
    run_id: str,
) -> StagedBatch:
    """Read, check, decode and preprocess a batch of files in one pass.

    Files that are not usable slices are written to `rejects` at once (that verdict is
    the file's own). The slices go to a staged part, sorted by series and z; they
    become visible only when `commit_batch` moves them into `slices`, after duplicates
    across batches have been resolved.
    """
    started = time.perf_counter()
    converted_files: list[tuple[str, ConvertedSlice]] = []
    rejects: list[Reject] = []
    lesions: list[LesionRow] = []
    for uri in source_uris:
        try:
            converted = convert_file(_open(uri), config, uri)
        except (TimeoutError, ConnectionError):
            raise
        except AnnotationFound as found:  # lesion truth: kept, and listed as what it is
            lesions.extend(found.rows)
            rejects.append(as_reject(uri, found))
            continue
        except FILE_ERRORS as err:  # the file's own defect: a reject, never a failed batch
            rejects.append(as_reject(uri, err))
            continue
        except Exception as err:
            # Anything else is a bug, not a bad file: it fails the task loudly, with the
            # file named, instead of turning every file of the archive into a reject.
            err.add_note(f"renalflow: while converting {uri}")
            raise
        converted_files.append((uri, converted))
    # Sorted by series and position along the body: a part reads back in slice order.
    converted_files.sort(key=lambda item: _series_and_z(item[1]))
    rows = [
        slice_row(
            uri,
            converted,
            cohort=cohort,
            label=labels.get(converted.header.patient_id),
            run_id=run_id,
            version=config.version,
        )
        for uri, converted in converted_files
    ]
    # Named after its files: a batch run again (a retry, or a worker lost after writing)
    # overwrites its own parts instead of adding a second copy.
    batch_id = hashlib.sha256("\n".join(source_uris).encode()).hexdigest()[:12]
    part = f"part-{run_id[:8]}-{batch_id}"
    staged = write_part(staging_folder(store_uri, run_id), SLICES, rows, part)
    write_lesions(store_uri, lesions, run_id, part)  # before the rejects that list them
    write_rejects(store_uri, rejects, cohort, run_id, config.version, part)
    report = BatchReport(
        n_files=len(source_uris),
        n_slices=len(rows),
        rejects=Counter(r.code.value for r in rejects),
        seconds=time.perf_counter() - started,
        worker=worker_name(),
    )
    sops = [(converted.header.sop_instance_uid, uri) for uri, converted in converted_files]
    return StagedBatch(staged, part, sops, report)


def _series_and_z(converted: ConvertedSlice) -> tuple[str, float]:
    header = converted.header
    return header.series_instance_uid, header.z if header.z is not None else 0.0


def commit_batch(
    store_uri: str,
    staged: StagedBatch,
    stored: dict[str, str],
    cohort: str,
    run_id: str,
    version: str,
) -> list[Reject]:
    """Move a staged part into `slices`, turning repeated SOPInstanceUIDs into rejects.

    `stored` maps every SOPInstanceUID already in the store (or committed earlier in
    this run) to its source; it is updated in place. The first copy of an image to be
    committed is kept; later copies become `duplicate` rejects. Only decoded slices
    compete, so a damaged copy never takes a good copy of the same image down with it.
    The slices part is committed before the duplicate rejects are written: a crash in
    between leaves those files unaccounted for, and the next run rejects them again.
    """
    duplicates: list[Reject] = []
    keep: list[bool] = []
    for sop, uri in staged.sops:
        if sop in stored:
            duplicates.append(
                Reject(
                    uri,
                    RejectReason.DUPLICATE,
                    f"duplicate of SOPInstanceUID {sop} (already stored from {stored[sop]})",
                    sop,
                )
            )
            keep.append(False)
        else:
            stored[sop] = uri
            keep.append(True)
    if staged.staged_part is not None:
        if all(keep):
            move_part(staged.staged_part, store_uri, SLICES, staged.part_name)
        else:
            table = read_part(staged.staged_part).filter(pa.array(keep))
            write_part(store_uri, SLICES, table, staged.part_name)
            remove_part(staged.staged_part)
    write_rejects(store_uri, duplicates, cohort, run_id, version, f"dup-{staged.part_name}")
    return duplicates


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
        if label not in {member.value for member in Label}:
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
