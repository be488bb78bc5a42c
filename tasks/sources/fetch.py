"""Fetch one study from a PACS into the source's cache folder: its CT series that cover
the kidneys, no localizer, and no instance the cache already holds (a study cut short by
a crash is completed, never fetched twice). One study is one unit of work for a Dask
worker; the flow decides how many run at once.
"""

from __future__ import annotations

import io
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

from renalflow.tasks.dicom import RejectedFile, read_dataset
from renalflow.tasks.sources import (
    PacsSource,
    SourceKind,
    StudyNotDelivered,
    evidence_uri,
    instance_path,
    instances_folder,
    pacs_root,
    uid_name,
    write_whole,
)
from renalflow.tasks.sources.query import (
    PacsClient,
    PacsSettings,
    StudyRef,
    instance_wanted,
    series_skip_reason,
)

PARTIAL = "_partial"
"""Instances being written (beside the cache, so ingest never lists half a file)."""


@dataclass
class StudyFetch:
    """What fetching one study did; small enough to travel back from a worker."""

    study: StudyRef
    series_fetched: int = 0
    series_skipped: dict[str, str] = field(default_factory=dict)  # series UID -> reason
    instances_fetched: int = 0
    instances_cached: int = 0  # already in the cache: not fetched again
    localizers_skipped: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0


@dataclass
class SourceSummary:
    """What fetching from a PACS source did in one run (part of the ingest summary)."""

    source: str
    folder: str  # the source's folder in the store (its cache and watermark)
    dates: str  # the StudyDate range queried
    studies_listed: int = 0
    already_delivered: int = 0
    studies_skipped: Counter[str] = field(default_factory=Counter)  # reason -> studies
    retried: int = 0  # studies that failed on an earlier run, tried again
    delivered: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID -> reason
    series_fetched: int = 0
    series_skipped: Counter[str] = field(default_factory=Counter)  # reason -> series
    instances_fetched: int = 0
    instances_cached: int = 0
    localizers_skipped: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0
    cache_files: int = 0  # what the source's cache holds after the run
    cache_bytes: int = 0
    prune_cache: bool = False  # whether this run pruned (--prune-cache)
    studies_pruned: int = 0  # --prune-cache: studies whose pixels were dropped this run
    bytes_pruned: int = 0
    files_kept: int = 0  # files of pruned studies whose header could not be read: kept

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (dataclasses.asdict would turn each Counter's items into
        tuple keys)."""
        out = asdict(self)
        out["studies_skipped"] = dict(self.studies_skipped)
        out["series_skipped"] = dict(self.series_skipped)
        return out

    def add_prune(self, pruned: StudyPrune) -> None:
        self.studies_pruned += 1 if pruned.files else 0
        self.bytes_pruned += pruned.bytes_freed
        self.files_kept += pruned.kept

    def add(self, fetched: StudyFetch) -> None:
        self.delivered += 1
        self.series_fetched += fetched.series_fetched
        self.series_skipped.update(fetched.series_skipped.values())
        self.instances_fetched += fetched.instances_fetched
        self.instances_cached += fetched.instances_cached
        self.localizers_skipped += fetched.localizers_skipped
        self.bytes_fetched += fetched.bytes_fetched

    def lines(self) -> list[str]:
        """The summary's lines, for the ingest summary."""
        megabytes = self.bytes_fetched / 1e6
        rate = megabytes / self.seconds if self.seconds else 0.0
        lines = [
            f"  PACS studies     {self.studies_listed:>8,}  listed (StudyDate {self.dates})",
            f"    delivered before {self.already_delivered:>6,}",
            f"    fetched now    {self.delivered:>8,}  ({self.retried} retried after an earlier "
            "failure)",
            f"    not delivered  {len(self.failed):>8,}  (recorded; retried next run)",
        ]
        for reason, count in self.studies_skipped.most_common():
            lines.append(f"    skipped {count:>6,}  {reason}")
        lines.append(
            f"  PACS instances   {self.instances_fetched:>8,}  fetched ({megabytes:,.1f} MB, "
            f"{rate:,.1f} MB/s), {self.instances_cached:,} already cached, "
            f"{self.localizers_skipped:,} localizers not fetched"
        )
        lines.append(
            f"  PACS series      {self.series_fetched:>8,}  fetched, "
            f"{sum(self.series_skipped.values()):,} left on the PACS"
        )
        lines.append(
            f"  PACS cache       {self.cache_files:>8,}  files, {_size(self.cache_bytes)}"
            + ("" if self.prune_cache else " (kept; --prune-cache frees it)")
        )
        if self.studies_pruned or self.files_kept:
            lines.append(
                f"    pruned now     {self.studies_pruned:>8,}  studies, "
                f"{_size(self.bytes_pruned)} freed (headers kept for SRs)"
                + (f"; {self.files_kept:,} unreadable files kept" if self.files_kept else "")
            )
        for uid, reason in list(self.failed.items())[:5]:
            lines.append(f"    not delivered: {uid}: {reason}")
        return lines


def make_cache(store: str, source: PacsSource) -> str:
    """The cache folder of `source` in `store`, made when missing (local stores)."""
    folder = instances_folder(store, source)
    fs, path = fsspec.core.url_to_fs(folder)
    fs.makedirs(path, exist_ok=True)
    return folder


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:,.2f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:,.1f} MB"


@dataclass
class StudyPrune:
    """What pruning one study's cached instances did."""

    study: str  # the study's folder in the cache (uid_name of its StudyInstanceUID)
    files: int = 0
    bytes_freed: int = 0
    kept: int = 0  # files whose header could not be read: left in the cache


def prune_study(store: str, source: PacsSource, study: str) -> StudyPrune:
    """Keep only the header of each cached instance of `study` (a folder name under the
    cache) beside the cache (EVIDENCE), where an SR sent later still finds what it cites,
    and delete the instance. For studies delivered whole and ingested: their slices are
    in the store. A header is written whole before its instance is deleted, so a crash
    loses neither; a file whose header cannot be read is kept and counted."""
    folder = f"{instances_folder(store, source)}/{study}"
    fs, path = fsspec.core.url_to_fs(folder)
    done = StudyPrune(study)
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        found = {}
    if not found:  # pruned before, or never cached
        return done
    for name, info in sorted(found.items()):
        try:
            with fs.open(name, "rb") as handle:
                header = read_dataset(handle, with_pixels=False)
        except RejectedFile:
            done.kept += 1
            continue
        for tag in [t for t in header.keys() if t >= 0x7FE00000]:  # pixels and after
            del header[tag]
        buffer = io.BytesIO()
        try:
            header.save_as(buffer, enforce_file_format=True)
        except ValueError:  # no file meta to write a Part 10 file with: keep the instance
            done.kept += 1
            continue
        write_whole(fs, evidence_uri(name), buffer.getvalue())
        fs.rm_file(name)
        done.files += 1
        done.bytes_freed += int(info.get("size") or 0) - len(buffer.getvalue())
    if not done.kept:
        fs.rm(path, recursive=True)  # the empty series folders
    return done


def cache_size(store: str, source: PacsSource) -> tuple[int, int]:
    """(files, bytes) in the instance cache of `source`: it grows with every study
    fetched, unless `--prune-cache` keeps only the headers of studies ingested."""
    folder = instances_folder(store, source)
    fs, path = fsspec.core.url_to_fs(folder)
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return 0, 0
    return len(found), sum(int(info.get("size") or 0) for info in found.values())


def open_client(source: PacsSource, settings: PacsSettings) -> PacsClient:
    """The client of `source`'s protocol (its library imported only now)."""
    if source.kind is SourceKind.DICOMWEB:
        from renalflow.tasks.sources.dicomweb import DicomwebPacs

        return DicomwebPacs(source, settings)
    from renalflow.tasks.sources.dimse import DimsePacs

    return DimsePacs(source, settings)


class CacheWriter:
    """The sink fetched instances go to: each written whole beside the cache, then moved
    into place, so a crash leaves either the whole file or none."""

    def __init__(self, store: str, source: PacsSource) -> None:
        root = pacs_root(store, source)
        self.folder = instances_folder(store, source)
        self.fs, _ = fsspec.core.url_to_fs(root)
        self.partial = f"{root}/{PARTIAL}"
        self.received: set[str] = set()
        self.bytes = 0

    def __call__(self, study: str, series: str, sop: str, data: bytes) -> None:
        final = instance_path(self.folder, study, series, sop)
        # Written beside the cache, so ingest never lists half a file.
        write_whole(self.fs, final, data, temporary=f"{self.partial}/{uuid.uuid4().hex}")
        self.received.add(uid_name(sop))
        self.bytes += len(data)

    def cached(self, study: str, series: str) -> set[str]:
        """The file names (uid_name of SOPInstanceUID) cached for one series."""
        folder = "/".join((self.folder, uid_name(study), uid_name(series)))
        try:
            names = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return set()
        return {str(name).rsplit("/", 1)[-1].removesuffix(".dcm") for name in names}


def fetch_study(
    source: PacsSource, study: StudyRef, store: str, settings: PacsSettings
) -> StudyFetch:
    """Fetch what the screening needs of `study` into the cache of `source` in `store`.

    Raises StudyNotDelivered when instances the PACS listed did not arrive, PacsError
    for what the user must fix, PacsUnavailableError for what may pass.
    """
    started = time.perf_counter()
    report = StudyFetch(study)
    writer = CacheWriter(store, source)
    uid = study.study_instance_uid
    client = open_client(source, settings)
    try:
        listed = client.find_series(uid)
        if not listed:
            raise StudyNotDelivered(
                "the PACS listed the study but has no series for it now (deleted or moved "
                "since the query?)"
            )
        for series in listed:
            reason = series_skip_reason(series, settings.rule)
            if reason:
                report.series_skipped[series.series_instance_uid] = reason
                continue
            instances = client.find_instances(uid, series.series_instance_uid)
            if not instances:
                raise StudyNotDelivered(
                    f"the PACS lists series {series.series_instance_uid} but no instances of "
                    "it (deleted since the query?)"
                )
            wanted = [i.sop_instance_uid for i in instances if instance_wanted(i)]
            report.localizers_skipped += len(instances) - len(wanted)
            if not wanted:
                report.series_skipped[series.series_instance_uid] = "only localizers"
                continue
            report.series_fetched += 1
            have = writer.cached(uid, series.series_instance_uid)
            missing = [sop for sop in wanted if uid_name(sop) not in have]
            report.instances_cached += len(wanted) - len(missing)
            if not missing:
                continue
            if len(missing) == len(instances):  # the whole series: one request
                client.fetch_series(uid, series.series_instance_uid, writer)
            else:
                client.fetch_instances(uid, series.series_instance_uid, missing, writer)
            absent = [sop for sop in missing if uid_name(sop) not in writer.received]
            if absent:
                raise StudyNotDelivered(
                    f"{len(absent)} of {len(wanted)} instances of series "
                    f"{series.series_instance_uid} did not arrive (first: {absent[0]})"
                )
    finally:
        client.close()
    report.instances_fetched = len(writer.received)
    report.bytes_fetched = writer.bytes
    report.seconds = time.perf_counter() - started
    return report
