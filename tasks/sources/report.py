"""Results back to the PACS: one DICOM Enhanced SR per screened study, so a radiologist
sees renalflow's result beside the images in the viewer.

Enhanced SR (not Comprehensive 3D SR, not Key Object Selection): the result is a few
numbers, a text and the slices that voted. Enhanced SR holds exactly that (TEXT, NUM and
IMAGE items) and every viewer that shows SR shows it; no spatial coordinates are needed,
and a Key Object Selection could name the slices but not carry the vote or its share.

The document says in its title, its series description and its first item that it is a
research screening result, not a diagnosis; it is marked PRELIMINARY and UNVERIFIED.

Its UIDs are derived from what it says (study, model version, vote, the slices voted on),
so writing it again gives the same instance, which a PACS stores once. A study scored
again (images added since, or another model on the same slice store) gets a new SR that
names the ones this store's records say the PACS has for that study in its
PredecessorDocumentsSequence, so a viewer shows it as their successor; one still
waiting to be sent is withdrawn instead. (A model with other preprocessing scores from
a store of its own, whose records know nothing of the first.) Before it is sent
it is kept beside the source's watermark (`reports/SOP.dcm`); once the PACS has it,
`reports/SOP.sent.json` records that, so a rerun after a crash sends what is pending and
nothing twice.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import fsspec
import pandas as pd
import pyarrow as pa
import pydicom
from highdicom.sr import (
    CodedConcept,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    EnhancedSR,
    ImageContentItem,
    NumContentItem,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedSRStorage

from renalflow.tasks.config import StudyStatus
from renalflow.tasks.pseudonym import pseudonym
from renalflow.tasks.selection import StudySelection
from renalflow.tasks.sources import evidence_uri, write_whole
from renalflow.tasks.store import now_utc

REPORTS = "reports"
"""Where a PACS source's SR documents wait to be sent, and the record of those sent."""

DISCLAIMER = (
    "RESEARCH SCREENING RESULT - NOT A DIAGNOSIS. Written by renalflow, a research tool "
    "that screens CT archives for benign renal masses (oncocytoma versus renal cell "
    "carcinoma). It has not been verified by a physician and must not be used for "
    "clinical decisions."
)
SERIES_DESCRIPTION = "renalflow research screening - not a diagnosis"
SERIES_NUMBER = 9901
"""renalflow's choice: a high series number, so the SR sorts after the images."""
MANUFACTURER = "renalflow"

_SCHEME = "99RENALFLOW"  # a private coding scheme (PS3.16 8.2: designators beginning 99)
_TITLE = CodedConcept("RF-SCREEN", _SCHEME, "Renal mass screening (research, not a diagnosis)")
_COMMENT = CodedConcept("121106", "DCM", "Comment")
_ALGORITHM_NAME = CodedConcept("111001", "DCM", "Algorithm Name")
_ALGORITHM_VERSION = CodedConcept("111003", "DCM", "Algorithm Version")
_FINDING = CodedConcept("121071", "DCM", "Finding")
_MALIGNANT_SHARE = CodedConcept("RF-MALIGNANT-SHARE", _SCHEME, "Share of voted slices malignant")
_VOTE_THRESHOLD = CodedConcept("RF-VOTE-THRESHOLD", _SCHEME, "Malignant share for a malignant vote")
_IMAGE_THRESHOLD = CodedConcept("RF-IMAGE-THRESHOLD", _SCHEME, "P(malignant) for a malignant slice")
_SLICES_VOTED = CodedConcept("RF-SLICES-VOTED", _SCHEME, "Slices voted on")
_SOURCE = CodedConcept("121112", "DCM", "Source of Measurement")
_PERCENT = CodedConcept("%", "UCUM", "percent")
_COUNT = CodedConcept("{slices}", "UCUM", "slices")

# Type 2 attributes the SR copies from its evidence: empty when an image lacks them.
_COPIED = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)


@dataclass(frozen=True)
class VotedSlice:
    series_instance_uid: str
    sop_instance_uid: str
    source_uri: str  # the cached instance: its header is the SR's evidence


@dataclass(frozen=True)
class StudyResult:
    """One study's vote as the SR states it (identifiers in clear: it goes back to the
    PACS the study came from, never into the results table)."""

    study_instance_uid: str
    status: str
    vote: str | None
    fraction_malignant: float | None
    n_images: int
    n_malignant: int
    vote_threshold: float
    image_threshold: float
    model_version: str
    voted: tuple[VotedSlice, ...]
    any_slice: VotedSlice  # evidence when no slice voted (no mass found)


def study_results(
    slices: pd.DataFrame,
    selections: list[StudySelection],
    vote_rows: pa.Table,
    key: bytes,
) -> list[StudyResult]:
    """The SR content of each study voted on in a run: its row in `vote_rows` (found by
    its pseudonym under `key`) and the inventory rows of the slices that voted."""
    rows = {row["study_key"]: row for row in vote_rows.to_pylist()}
    frame = slices.drop_duplicates("sop_instance_uid")
    by_study = {uid: group for uid, group in frame.groupby("study_instance_uid", sort=True)}
    found = []
    for selection in sorted(selections, key=lambda s: s.study_instance_uid):
        row = rows.get(pseudonym(key, selection.study_instance_uid))
        group = by_study.get(selection.study_instance_uid)
        if row is None or group is None:
            continue
        refs = [
            VotedSlice(str(r.series_instance_uid), str(r.sop_instance_uid), str(r.source_uri))
            for r in group.itertuples(index=False)
        ]
        voted = tuple(r for r in refs if r.sop_instance_uid in selection.selected)
        found.append(
            StudyResult(
                selection.study_instance_uid,
                str(row["status"]),
                row["vote"],
                row["fraction_malignant"],
                int(row["n_images"]),
                int(row["n_malignant"]),
                float(row["vote_threshold"]),
                float(row["image_threshold"]),
                str(row["model_version"]),
                voted,
                refs[0],
            )
        )
    return found


def report_uids(result: StudyResult) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the study's SR: derived from what it says,
    so the same result is always the same instance (2.25 UIDs, PS3.5 B.2)."""
    said = [
        result.study_instance_uid,
        result.model_version,
        result.status,
        str(result.vote),
        repr(result.fraction_malignant),
        repr(result.vote_threshold),
        repr(result.image_threshold),
        *sorted(s.sop_instance_uid for s in result.voted),
    ]
    return _derived_uid("renalflow-sr-series", *said[:2]), _derived_uid("renalflow-sr", *said)


_UID_NAMESPACE = uuid.UUID("6f1c1f0e-5d8a-5b8e-9c53-2f0e4b7a9d21")
"""renalflow's namespace for name-based UUIDs (our choice; fixed forever)."""


def _derived_uid(*parts: str) -> str:
    """A 2.25 UID from a name-based (SHA-1, version 5) UUID of `parts`: the same parts,
    the same UID, on any machine (PS3.5 B.2, ISO/IEC 9834-8). pydicom's
    generate_uid(prefix=None) cannot: it ignores its entropy sources and draws a random
    UUID."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, json.dumps(parts)).int}"


def read_evidence(uris: Iterable[str]) -> list[Dataset]:
    """The headers of the cached instances the SR refers to (no pixels): from the cache,
    or, for a pruned study (`--prune-cache`), from the headers kept for it."""
    headers: list[Dataset] = []
    for uri in uris:
        try:
            header = _header(uri)
        except FileNotFoundError:  # pruned: its header was kept
            header = _header(evidence_uri(uri))
        for keyword in _COPIED:
            if keyword not in header:
                setattr(header, keyword, "")
        headers.append(header)
    return headers


def _finding(result: StudyResult) -> str:
    if result.status != StudyStatus.VOTED or result.vote is None:
        return (
            "No vote: no slice showing a renal mass was selected in this study "
            f"({result.status.replace('_', ' ')})."
        )
    share = 100 * (result.fraction_malignant or 0.0)
    return (
        f"Screening vote: {result.vote} ({result.n_malignant} of {result.n_images} slices "
        f"voted malignant, {share:.1f}%; a study is malignant at "
        f"{100 * result.vote_threshold:.0f}% or more)."
    )


def build_report(
    result: StudyResult, evidence: list[Dataset], previous: Sequence[Dataset] = ()
) -> EnhancedSR:
    """The SR of one study: the disclaimer, the algorithm and model version, the vote,
    the malignant share, the thresholds, and the slices voted on as image references.
    `evidence` holds the headers of the voted slices (or one slice of the study);
    `previous`, the study's SR documents the PACS has (`previous_reports`), which this
    one succeeds."""
    contains = RelationshipTypeValues.CONTAINS
    root = ContainerContentItem(_TITLE, is_content_continuous=False)
    items: list[ContentItem] = [
        TextContentItem(_COMMENT, DISCLAIMER, contains),
        TextContentItem(_ALGORITHM_NAME, "renalflow", contains),
        TextContentItem(_ALGORITHM_VERSION, f"model {result.model_version}", contains),
        TextContentItem(_FINDING, _finding(result), contains),
    ]
    if result.fraction_malignant is not None:
        share = round(100 * result.fraction_malignant, 2)
        items.append(NumContentItem(_MALIGNANT_SHARE, share, _PERCENT, relationship_type=contains))
    items += [
        NumContentItem(
            _VOTE_THRESHOLD, 100 * result.vote_threshold, _PERCENT, relationship_type=contains
        ),
        NumContentItem(
            _IMAGE_THRESHOLD, 100 * result.image_threshold, _PERCENT, relationship_type=contains
        ),
        NumContentItem(_SLICES_VOTED, result.n_images, _COUNT, relationship_type=contains),
    ]
    classes = {str(h.SOPInstanceUID): str(h.SOPClassUID) for h in evidence}
    for voted in result.voted:
        items.append(
            ImageContentItem(
                _SOURCE,
                classes[voted.sop_instance_uid],
                voted.sop_instance_uid,
                relationship_type=contains,
            )
        )
    root.ContentSequence = ContentSequence(items)
    series, sop = report_uids(result)
    earlier = sorted(
        (p for p in previous if str(p.SOPInstanceUID) != sop), key=lambda p: p.SOPInstanceUID
    )
    report = EnhancedSR(
        evidence=evidence,
        previous_versions=earlier or None,
        content=root,
        series_instance_uid=series,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # PRELIMINARY: nobody has verified it
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
    )
    scheme = Dataset()  # what the private codes are (PS3.3 C.12.1.1.4)
    scheme.CodingSchemeDesignator = _SCHEME
    scheme.CodingSchemeName = "renalflow screening concepts"
    scheme.CodingSchemeResponsibleOrganization = "renalflow"
    report.CodingSchemeIdentificationSequence = [scheme]
    _deidentification(report, evidence[0])
    return report


def _deidentification(report: Dataset, source: Dataset) -> None:
    """An SR of de-identified images says how they were de-identified (Type 1C): as the
    images say, or that they do not say."""
    if str(report.get("PatientIdentityRemoved", "")).upper() != "YES":
        return
    for keyword in ("DeidentificationMethod", "DeidentificationMethodCodeSequence"):
        if keyword in source:
            setattr(report, keyword, source[keyword].value)
    if "DeidentificationMethod" not in report and "DeidentificationMethodCodeSequence" not in (
        report
    ):
        report.DeidentificationMethod = "not stated by the images referenced"


def report_for(result: StudyResult, previous: Sequence[Dataset] = ()) -> EnhancedSR:
    """The SR of one study, its evidence read from the cache; `previous`: the study's
    SR documents the PACS already has."""
    uris = [s.source_uri for s in result.voted] or [result.any_slice.source_uri]
    return build_report(result, read_evidence(uris), previous)


# -- what waits to be sent, and what was sent -------------------------------------------


def _folder(root: str) -> str:
    return f"{root}/{REPORTS}"


def queue_reports(root: str, reports: Iterable[Dataset]) -> int:
    """Keep each report beside the source's watermark until it is sent; returns how many
    were new (the same instance queued or sent before is not queued again). A report of
    the same study still waiting to be sent is withdrawn: the new one supersedes it
    before the PACS ever had it."""
    fs, _ = fsspec.core.url_to_fs(root)
    waiting: dict[str, list[str]] = defaultdict(list)
    for path in pending_reports(root):
        waiting[str(_header(path, "StudyInstanceUID").StudyInstanceUID)].append(path)
    queued = 0
    for report in reports:
        path = f"{_folder(root)}/{report.SOPInstanceUID}.dcm"
        if fs.exists(path):
            continue
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, report, enforce_file_format=True)
        write_whole(fs, path, buffer.getvalue())
        queued += 1
        # Only once its successor is in place: a crash in between leaves both, never none.
        for superseded in waiting.pop(str(report.StudyInstanceUID), []):
            fs.rm_file(superseded)
    return queued


def pending_reports(root: str) -> list[str]:
    """Paths of the queued reports the PACS has not acknowledged yet."""
    fs, _ = fsspec.core.url_to_fs(root)
    try:
        names = [str(n).rsplit("/", 1)[-1] for n in fs.ls(_folder(root), detail=False)]
    except FileNotFoundError:
        return []
    sent = {n.removesuffix(".sent.json") for n in names if n.endswith(".sent.json")}
    return sorted(
        f"{_folder(root)}/{n}"
        for n in names
        if n.endswith(".dcm") and n.removesuffix(".dcm") not in sent
    )


def sent_reports(root: str) -> dict[str, dict[str, str]]:
    """SOPInstanceUID -> what was recorded when the PACS acknowledged it."""
    fs, _ = fsspec.core.url_to_fs(root)
    try:
        names = [str(n) for n in fs.ls(_folder(root), detail=False)]
    except FileNotFoundError:
        return {}
    return {
        name.rsplit("/", 1)[-1].removesuffix(".sent.json"): json.loads(fs.cat_file(name))
        for name in names
        if name.endswith(".sent.json")
    }


def previous_reports(root: str) -> dict[str, list[Dataset]]:
    """StudyInstanceUID -> the SR documents of that study the PACS has acknowledged, as
    the references a successor names (Enhanced SR, their study, series and instance)."""
    by_study: dict[str, list[Dataset]] = defaultdict(list)
    for record in sent_reports(root).values():
        reference = Dataset()
        reference.SOPClassUID = EnhancedSRStorage
        reference.SOPInstanceUID = record["sop_instance_uid"]
        reference.StudyInstanceUID = record["study_instance_uid"]
        reference.SeriesInstanceUID = record["series_instance_uid"]
        by_study[record["study_instance_uid"]].append(reference)
    return dict(by_study)


def _header(path: str, *keywords: str) -> Dataset:
    """The header of a DICOM file (no pixels); only `keywords` when given."""
    fs, where = fsspec.core.url_to_fs(path)
    with fs.open(where, "rb") as handle:
        return pydicom.dcmread(
            handle, stop_before_pixels=True, specific_tags=list(keywords) or None
        )


def read_report(path: str) -> Dataset:
    fs, _ = fsspec.core.url_to_fs(path)
    return pydicom.dcmread(io.BytesIO(fs.cat_file(path)))


def record_sent(root: str, report: Dataset) -> None:
    """The PACS has `report`: never send it again."""
    fs, _ = fsspec.core.url_to_fs(root)
    record = {
        "study_instance_uid": str(report.StudyInstanceUID),
        "series_instance_uid": str(report.SeriesInstanceUID),
        "sop_instance_uid": str(report.SOPInstanceUID),
        "sent_at": now_utc().isoformat(),
    }
    path = f"{_folder(root)}/{report.SOPInstanceUID}.sent.json"
    fs.pipe_file(path, json.dumps(record).encode())
