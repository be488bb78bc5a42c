"""Lesion annotations: which slices of a series show the renal mass.

Two sources, one meaning. A DICOM Segmentation (SEG) object in the archive marks the
source slices of its frames; a lesions CSV names, per series, the first and last
lesion slice (by SOPInstanceUID or by z). Either way a series with an annotation has a
known answer for every slice (inside the lesion range or not), and a series without
one is unknown. The rows go to the store's `lesions` table (tasks/store.py names it);
`lesion_flags` turns them into a `lesion` value per stored slice.

Which SEG segments are renal masses is a rule with words (our choice): a segment
counts when its label or its property type names a mass, a tumour or a lesion. A SEG
of other structures (a liver, a kidney outline) is listed as a non-image object and
says nothing about lesions.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from pydicom.dataset import Dataset

from renalflow.tasks.dicom import RejectedFile, RejectReason
from renalflow.tasks.errors import InputError

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

LESION_WORDS: tuple[str, ...] = (
    "mass",
    "tumor",
    "tumour",
    "lesion",
    "neoplasm",
    "carcinoma",
    "oncocytoma",
    "rcc",
    "cancer",
)
"""Our choice: a SEG segment whose label or property type holds one of these words (as
the start of a word, any case) is a renal lesion."""


class AnnotationFound(RejectedFile):
    """A file that is lesion truth, not a slice: its rows go to the store's `lesions`
    and the file is listed as a non-image object."""

    def __init__(self, reason: str, rows: list[LesionRow]) -> None:
        super().__init__(RejectReason.NON_IMAGE, reason)
        self.rows = rows


class AnnotationSource:
    """Where a lesion row came from (the `source` column of the lesions table)."""

    SEG = "seg"
    CSV = "csv"


@dataclass(frozen=True)
class LesionRow:
    """One annotated slice (`sop_instance_uid`) or range (`first`/`last` SOP, or z)."""

    study_instance_uid: str
    series_instance_uid: str
    source: str
    source_uri: str
    sop_instance_uid: str | None = None  # one slice that shows the lesion (SEG)
    first_sop_instance_uid: str | None = None  # a range by its end slices (CSV)
    last_sop_instance_uid: str | None = None
    z_min: float | None = None  # a range by position along the body (CSV)
    z_max: float | None = None
    segment: str = ""


def _words(text: str) -> list[str]:
    return "".join(c if c.isalnum() else " " for c in text.lower()).split()


def is_lesion_segment(segment: Dataset, words: tuple[str, ...] = LESION_WORDS) -> bool:
    """Whether a SegmentSequence item describes a renal lesion (by label or type)."""
    texts = [str(segment.get("SegmentLabel", "")), str(segment.get("SegmentDescription", ""))]
    for item in segment.get("SegmentedPropertyTypeCodeSequence", []):
        texts.append(str(item.get("CodeMeaning", "")))
    return any(w.startswith(words) for text in texts for w in _words(text))


def seg_lesions(
    ds: Dataset, source_uri: str, words: tuple[str, ...] = LESION_WORDS
) -> tuple[list[LesionRow], str]:
    """The lesion slices a SEG marks (the source slices of its non-empty frames of lesion
    segments), and a description of the object for the ingest summary.

    Every slice of the referenced series is then known: a lesion slice or not."""
    segments = {int(s.SegmentNumber): s for s in ds.get("SegmentSequence", [])}
    lesion_numbers = {n for n, s in segments.items() if is_lesion_segment(s, words)}
    labels = ", ".join(str(s.get("SegmentLabel", "?")) for s in segments.values()) or "none"
    series_refs = ds.get("ReferencedSeriesSequence", [])
    if not series_refs:
        return [], f"DICOM SEG ({labels}) that references no series"
    series_uid = str(series_refs[0].SeriesInstanceUID)
    frames = ds.get("PerFrameFunctionalGroupsSequence", [])
    if not lesion_numbers:
        return [], f"DICOM SEG of {labels}: no renal lesion segment, not used as lesion truth"
    pixels = ds.pixel_array.reshape(len(frames), -1) if frames else np.zeros((0, 0))
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    rows: list[LesionRow] = []
    for index, frame in enumerate(frames):
        # Per frame, or shared by all frames when the SEG holds one segment.
        identified = frame.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        number = int(identified[0].ReferencedSegmentNumber) if identified else 1
        if number not in lesion_numbers or not pixels[index].any():
            continue
        for derivation in frame.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                rows.append(
                    LesionRow(
                        study_instance_uid=str(ds.StudyInstanceUID),
                        series_instance_uid=series_uid,
                        source=AnnotationSource.SEG,
                        source_uri=source_uri,
                        sop_instance_uid=str(source.ReferencedSOPInstanceUID),
                        segment=str(segments[number].get("SegmentLabel", "")),
                    )
                )
    unique = {r.sop_instance_uid: r for r in rows}
    described = f"DICOM SEG of {labels}: lesion on {len(unique)} slices of series {series_uid}"
    return list(unique.values()), described


CSV_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID")
CSV_RANGES = (("first_SOPInstanceUID", "last_SOPInstanceUID"), ("z_min", "z_max"))


def read_lesions_csv(uri: str) -> list[LesionRow]:
    """A lesions CSV: StudyInstanceUID, SeriesInstanceUID and the lesion's range as
    first_SOPInstanceUID,last_SOPInstanceUID or z_min,z_max (mm along the slice normal,
    as ImagePositionPatient gives it). A series may have several rows (several
    lesions). A series listed with empty range columns has no lesion."""
    with fsspec.open(uri, "rt", newline="") as handle:
        text = handle.read()
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing or not any(all(c in (reader.fieldnames or []) for c in r) for r in CSV_RANGES):
        raise InputError(
            f"{uri} needs the columns StudyInstanceUID, SeriesInstanceUID and either "
            "first_SOPInstanceUID,last_SOPInstanceUID or z_min,z_max; it has "
            f"{', '.join(reader.fieldnames or []) or 'none'}"
        )
    rows: list[LesionRow] = []
    for line, row in enumerate(reader, start=2):
        study, series = (row.get(c, "").strip() for c in CSV_COLUMNS)
        if not study or not series:
            raise InputError(f"{uri} line {line}: empty StudyInstanceUID or SeriesInstanceUID")
        first = (row.get("first_SOPInstanceUID") or "").strip() or None
        last = (row.get("last_SOPInstanceUID") or "").strip() or None
        try:
            z_min = float(row["z_min"]) if (row.get("z_min") or "").strip() else None
            z_max = float(row["z_max"]) if (row.get("z_max") or "").strip() else None
        except ValueError as err:
            raise InputError(f"{uri} line {line}: z_min/z_max must be numbers ({err})") from err
        if (first is None) != (last is None) or (z_min is None) != (z_max is None):
            raise InputError(f"{uri} line {line}: give both ends of the lesion's range")
        rows.append(
            LesionRow(
                study_instance_uid=study,
                series_instance_uid=series,
                source=AnnotationSource.CSV,
                source_uri=uri,
                first_sop_instance_uid=first,
                last_sop_instance_uid=last,
                z_min=z_min,
                z_max=z_max,
            )
        )
    return rows


def lesion_flags(slices: pd.DataFrame, lesions: pd.DataFrame) -> pd.Series:
    """Per stored slice: True (shows the lesion), False (its series is annotated and the
    slice is outside every lesion range), or None (no annotation covers its series).

    `slices` needs series_instance_uid, sop_instance_uid and z; `lesions` is the store's
    lesions table (LesionRow columns)."""
    flags = pd.Series([None] * len(slices), index=slices.index, dtype="object")
    if lesions.empty or slices.empty:
        return flags
    z_of = dict(zip(slices["sop_instance_uid"], slices["z"], strict=True))
    by_series = {uid: rows for uid, rows in lesions.groupby("series_instance_uid")}
    for series_uid, group in slices.groupby("series_instance_uid"):
        rows = by_series.get(series_uid)
        if rows is None:
            continue
        marked = set(rows["sop_instance_uid"].dropna())
        ranges: list[tuple[float, float]] = []
        for row in rows.itertuples():
            low, high = _range_of(row, z_of)
            if low is not None and high is not None:
                ranges.append((min(low, high), max(low, high)))
        tolerance = 1e-3  # mm: z read back from the same header
        for index, uid, z in zip(group.index, group["sop_instance_uid"], group["z"], strict=True):
            inside = any(low - tolerance <= z <= high + tolerance for low, high in ranges)
            flags.at[index] = bool(uid in marked or (z is not None and inside))
    return flags


def _range_of(row: Any, z_of: dict[str, float]) -> tuple[float | None, float | None]:
    if row.z_min is not None and not pd.isna(row.z_min):
        return float(row.z_min), float(row.z_max)
    first, last = row.first_sop_instance_uid, row.last_sop_instance_uid
    if isinstance(first, str) and isinstance(last, str) and first in z_of and last in z_of:
        return z_of[first], z_of[last]
    return None, None
