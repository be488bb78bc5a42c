"""What to ask a PACS for, and what to fetch of what it answers, the same for DICOMweb
and DIMSE: studies with CT in them (in a StudyDate range), then of each study only the CT
series that cover the kidneys (tasks/config.py's SeriesRule, the words series selection
uses too), and of those never a localizer. Decided on the PACS's metadata, before any
pixels move.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, TypeVar

from renalflow.tasks.config import (
    CALLING_AE,
    PACS_CONCURRENCY,
    PACS_LOOKBACK_DAYS,
    PACS_TIMEOUT_S,
    SeriesRule,
)
from renalflow.tasks.errors import InputError
from renalflow.tasks.selection import judge_region

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

MODALITY = "CT"
"""The modality screened: studies must list it in ModalitiesInStudy, series must be it."""
ANNOTATION_MODALITIES = ("SEG",)
"""Series fetched beside the CT of a study: lesion annotations (DICOM SEG), which ingest
reads into the store's `lesions` (they decide which slices vote)."""


@dataclass(frozen=True)
class StudyRef:
    """A study as the PACS listed it."""

    study_instance_uid: str
    study_date: str = ""  # YYYYMMDD, or empty when the PACS has none
    study_description: str = ""
    modalities_in_study: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeriesRef:
    series_instance_uid: str
    modality: str = ""
    body_part_examined: str = ""
    series_description: str = ""


@dataclass(frozen=True)
class InstanceRef:
    sop_instance_uid: str
    image_type: tuple[str, ...] = ()


A = TypeVar("A")
"""One answer of a PACS query: a C-FIND identifier or a QIDO-RS item."""

STUDY_KEYS = ("StudyDate", "StudyDescription", "ModalitiesInStudy")
"""What `study_refs` reads of a study besides its StudyInstanceUID: every study query
asks for these (DICOMweb and DIMSE alike)."""
SERIES_KEYS = ("Modality", "BodyPartExamined", "SeriesDescription")
"""What `series_refs` reads of a series besides its SeriesInstanceUID."""
INSTANCE_KEYS = ("ImageType",)
"""What `instance_refs` reads of an instance besides its SOPInstanceUID."""


def study_matching(dates: tuple[str, str] | None) -> dict[str, str]:
    """The study query's matching keys: CT in the study, StudyDate in `dates` (empty:
    any date)."""
    return {"ModalitiesInStudy": MODALITY, "StudyDate": dicom_range(dates)}


def study_refs(
    answers: Iterable[A],
    text: Callable[[A, str], str],
    values: Callable[[A, str], tuple[str, ...]],
) -> list[StudyRef]:
    """The studies a PACS answered (`text` and `values` read an answer's attribute by
    keyword), those without a StudyInstanceUID left out."""
    refs = [
        StudyRef(
            text(answer, "StudyInstanceUID"),
            text(answer, "StudyDate"),
            text(answer, "StudyDescription"),
            tuple(m.upper() for m in values(answer, "ModalitiesInStudy")),
        )
        for answer in answers
    ]
    return [ref for ref in refs if ref.study_instance_uid]


def series_refs(answers: Iterable[A], text: Callable[[A, str], str]) -> list[SeriesRef]:
    """The series a PACS answered, those without a SeriesInstanceUID left out."""
    refs = [
        SeriesRef(
            text(answer, "SeriesInstanceUID"),
            text(answer, "Modality"),
            text(answer, "BodyPartExamined"),
            text(answer, "SeriesDescription"),
        )
        for answer in answers
    ]
    return [ref for ref in refs if ref.series_instance_uid]


def instance_refs(
    answers: Iterable[A],
    text: Callable[[A, str], str],
    values: Callable[[A, str], tuple[str, ...]],
) -> list[InstanceRef]:
    """The instances a PACS answered, those without a SOPInstanceUID left out."""
    refs = [
        InstanceRef(text(answer, "SOPInstanceUID"), values(answer, "ImageType"))
        for answer in answers
    ]
    return [ref for ref in refs if ref.sop_instance_uid]


@dataclass(frozen=True)
class PacsSettings:
    """How renalflow talks to one PACS and what it asks for (built at the entry point)."""

    calling_ae: str = CALLING_AE
    timeout_s: float = PACS_TIMEOUT_S
    concurrency: int = PACS_CONCURRENCY
    study_dates: tuple[str, str] | None = None  # (from, to) YYYYMMDD, either may be ""
    lookback_days: int = PACS_LOOKBACK_DAYS
    verify_tls: bool = True
    rule: SeriesRule = field(default_factory=SeriesRule)
    prune_cache: bool = False  # keep only headers of studies delivered and ingested


_DATE = re.compile(r"^(\d{8})?-?(\d{8})?$")


def _check_date(text: str) -> str:
    if text:
        try:
            datetime.strptime(text, "%Y%m%d")
        except ValueError as err:
            raise InputError(f"study date {text!r} is not a date YYYYMMDD") from err
    return text


def parse_study_dates(text: str | None) -> tuple[str, str] | None:
    """`20240101-20241231`, `20240101-` (from), `-20241231` (until) or `20240101` (one
    day) as (from, to); None for no range."""
    if not text:
        return None
    match = _DATE.match(text.strip())
    if not match or not (match.group(1) or match.group(2)):
        raise InputError(f"study dates {text!r}: write YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD")
    first, last = _check_date(match.group(1) or ""), _check_date(match.group(2) or "")
    if "-" not in text:
        last = first
    if first and last and first > last:
        raise InputError(f"study dates {text!r}: the range ends before it starts")
    return first, last


def date_range(settings: PacsSettings, since: str | None) -> tuple[str, str] | None:
    """The StudyDate range of a run: the one asked for, else from `lookback_days`
    before the newest StudyDate already delivered (`since`), else everything."""
    if settings.study_dates is not None:
        return settings.study_dates
    if not since:
        return None
    start = datetime.strptime(since, "%Y%m%d").date() - timedelta(days=settings.lookback_days)
    return start.strftime("%Y%m%d"), ""


def dicom_range(dates: tuple[str, str] | None) -> str:
    """A date range as a DICOM query matches it (empty: any date)."""
    if dates is None:
        return ""
    first, last = dates
    return first if first and first == last else f"{first}-{last}"


def study_skip_reason(study: StudyRef, rule: SeriesRule) -> str | None:
    """Why a listed study is not fetched at all (None: it is): no CT in it, or its
    description names another region (a PACS may ignore a modality filter)."""
    if study.modalities_in_study and MODALITY not in study.modalities_in_study:
        return f"no {MODALITY} in ModalitiesInStudy ({'/'.join(study.modalities_in_study)})"
    region = judge_region("", study.study_description, rule)
    if not region.abdominal:
        return f"StudyDescription names another region ({region.reason})"
    return None


def series_skip_reason(series: SeriesRef, rule: SeriesRule) -> str | None:
    """Why a series is not fetched (None: it is): another modality, or a body part or
    description that says the kidneys are not in it (the rule series selection uses).
    Lesion annotations are always fetched: they are small, and name the slices to vote."""
    if series.modality.upper() in ANNOTATION_MODALITIES:
        return None
    if series.modality.upper() != MODALITY:
        return f"modality {series.modality or 'missing'}"
    region = judge_region(series.body_part_examined, series.series_description, rule)
    if not region.abdominal:
        return f"not abdominal: {region.reason}"
    return None


def instance_wanted(instance: InstanceRef) -> bool:
    """Localizers are never fetched (ingest would reject them)."""
    return "LOCALIZER" not in (value.upper() for value in instance.image_type)


def newest_date(dates: Iterable[str], since: str | None) -> str | None:
    """The newest of `since` and `dates` (empty dates ignored)."""
    known = [d for d in dates if d] + ([since] if since else [])
    return max(known) if known else None


Sink = Callable[[str, str, str, bytes], None]
"""Where a fetched instance goes: (study UID, series UID, SOP UID, Part 10 bytes)."""


class PacsClient(Protocol):
    """What renalflow asks of a PACS, over DICOMweb or DIMSE. Methods raise PacsError
    (one line) for what the user must fix, PacsUnavailableError for what may pass."""

    def check(self) -> None:
        """Reach the PACS once: refused credentials or AE titles end here."""

    def find_studies(self, dates: tuple[str, str] | None) -> list[StudyRef]:
        """Studies with CT in them, in the StudyDate range."""
        ...

    def find_series(self, study: str) -> list[SeriesRef]: ...

    def find_instances(self, study: str, series: str) -> list[InstanceRef]: ...

    def fetch_series(self, study: str, series: str, sink: Sink) -> None:
        """Every instance of a series, each handed to `sink` as it arrives."""

    def fetch_instances(self, study: str, series: str, sops: list[str], sink: Sink) -> None:
        """The named instances of a series."""

    def store(self, dataset: Dataset) -> None:
        """Send one instance to the PACS (STOW-RS or C-STORE): results written back."""

    def close(self) -> None: ...
