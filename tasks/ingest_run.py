"""One ingest run, around the batched work of tasks/ingest.py: what to do (the plan:
the store made ready, the archive listed against the store's ledger) and what was done
(the summary: files, slices, rejects by reason, speed per worker).

The ingest flow (flows/ingest.py) only wires these to the workers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.dicom import RejectReason
from renalflow.tasks.ingest import BatchReport, Reject, discover_files, read_labels
from renalflow.tasks.sources.fetch import SourceSummary
from renalflow.tasks.store import (
    SLICES,
    check_manifest,
    clear_staging,
    read_ledger,
    read_patients,
)


@dataclass
class IngestPlan:
    """The files of an archive the store does not hold yet, and what they need."""

    files_found: int
    pending: list[str]  # source URIs to convert
    stored: dict[str, str]  # SOPInstanceUID -> source URI of every slice already stored
    labels: dict[str, str]  # PatientID -> label
    stale_batches: int  # uncommitted batches of interrupted runs, removed

    @property
    def files_already_stored(self) -> int:
        return self.files_found - len(self.pending)


def plan_ingest(
    archive: str, store: str, labels: str | None, config: PreprocessConfig
) -> IngestPlan:
    """Make the store ready for this preprocessing and list what is left to convert.

    Refuses a store made with other preprocessing; removes batches that crashed runs
    converted but never committed; a file already in the store (as a slice or a
    reject) is not converted again.
    """
    check_manifest(store, config.to_dict(), config.version)
    stale = clear_staging(store)
    label_map = read_labels(labels) if labels else {}
    found = discover_files(archive)
    ledger = read_ledger(store)
    pending = [uri for uri in found if uri not in ledger.source_uris]
    return IngestPlan(len(found), pending, dict(ledger.sop_sources), label_map, stale)


@dataclass
class IngestSummary:
    """What an ingest run did, for the printed summary and for callers."""

    archive: str
    store: str
    run_id: str
    preprocess_version: str
    files_found: int = 0
    files_already_stored: int = 0
    files_new: int = 0
    slices: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    work_seconds: float = 0.0
    workers: int = 0
    convert_tasks: int = 0
    worker_slices: dict[str, int] = field(default_factory=dict)
    worker_seconds: dict[str, float] = field(default_factory=dict)
    labelled_patients_without_slices: int = 0
    lesion_rows: int = 0
    source: SourceSummary | None = None  # what was fetched from a PACS archive

    @property
    def n_rejects(self) -> int:
        """Files that should have been slices and are not (non-image objects aside)."""
        return sum(n for code, n in self.rejects.items() if code != RejectReason.NON_IMAGE)

    @property
    def n_non_image(self) -> int:
        """SEG, SR, KO, PR and RT objects: files that are not images by nature."""
        return self.rejects.get(RejectReason.NON_IMAGE.value, 0)

    def add_plan(self, plan: IngestPlan) -> None:
        self.files_found = plan.files_found
        self.files_already_stored = plan.files_already_stored
        self.files_new = len(plan.pending)

    def add_batch(self, report: BatchReport) -> None:
        self.slices += report.n_slices
        self.rejects.update(report.rejects)
        worker = report.worker
        self.worker_slices[worker] = self.worker_slices.get(worker, 0) + report.n_slices
        self.worker_seconds[worker] = self.worker_seconds.get(worker, 0.0) + report.seconds

    def add_duplicates(self, duplicates: list[Reject]) -> None:
        """Slices a batch converted that turned out to be copies of stored ones."""
        self.slices -= len(duplicates)
        self.rejects.update(r.code.value for r in duplicates)

    def add_quarantined(self) -> None:
        """A file that killed the worker converting it on every attempt."""
        self.rejects[RejectReason.CRASHED_WORKER.value] += 1

    def add_unstored_patients(self, labels: dict[str, str]) -> None:
        """Count the labelled patients that have no slice in the store."""
        if labels:
            missing = set(labels) - read_patients(self.store)
            self.labelled_patients_without_slices = len(missing)


def summary_dict(summary: IngestSummary) -> dict[str, Any]:
    """The summary as plain JSON-ready values (for `--summary-json` and scripts)."""
    out = asdict(summary)
    out["rejects"] = dict(summary.rejects)
    out["source"] = summary.source.to_dict() if summary.source else None
    out["n_rejects"] = summary.n_rejects
    out["n_non_image"] = summary.n_non_image
    return out


def format_summary(summary: IngestSummary) -> str:
    """A readable end-of-run summary: files, slices, rejects by reason, speed per worker."""
    lines = [
        f"ingest run {summary.run_id}  (preprocess_version {summary.preprocess_version})",
        f"  archive          {summary.archive}",
        f"  store            {summary.store}",
        *(summary.source.lines() if summary.source else []),
        f"  files found      {summary.files_found:>8,}",
        f"  already stored   {summary.files_already_stored:>8,}",
        f"  new files        {summary.files_new:>8,}",
        f"  slices written   {summary.slices:>8,}",
        f"  rejects          {summary.n_rejects:>8,}",
    ]
    for code, count in summary.rejects.most_common():
        if code != RejectReason.NON_IMAGE:
            lines.append(f"    {code:<22} {count:>6,}")
    if summary.n_non_image:
        lines.append(
            f"  non-image objects {summary.n_non_image:>7,}  (SEG, SR, RT...: listed in rejects "
            "as non_image; lesion SEGs feed `lesions`)"
        )
    if summary.lesion_rows:
        lines.append(f"  lesion ranges    {summary.lesion_rows:>8,}  from the lesions CSV")
    rate = summary.slices / summary.seconds if summary.seconds else 0.0
    lines.append(f"  wall time        {summary.seconds:>8.1f} s  ({rate:,.0f} slices/s overall)")
    if summary.work_seconds and summary.workers:
        per_core = summary.slices / summary.work_seconds / summary.workers
        lines.append(
            f"  on the cluster   {summary.work_seconds:>8.1f} s  ({per_core:,.0f} slices/s per "
            f"worker thread, {summary.workers} threads)"
        )
    lines.append(f"  tasks            {summary.convert_tasks} conversion batches")
    for worker, slices in sorted(summary.worker_slices.items()):
        busy = summary.worker_seconds[worker]
        per = slices / busy if busy else 0.0
        lines.append(
            f"  worker {worker:<24} {slices:>7,} slices in {busy:6.1f} s busy ({per:,.0f} slices/s)"
        )
    if summary.labelled_patients_without_slices:
        lines.append(
            f"  note: {summary.labelled_patients_without_slices} labelled patients have no "
            "slices in the store"
        )
    lines.append(
        '  read with: python -c "import duckdb; duckdb.sql(\\"select count(*) from \''
        f'{summary.store.rstrip("/")}/{SLICES}/*.parquet\'\\").show()"'
    )
    return "\n".join(lines)
