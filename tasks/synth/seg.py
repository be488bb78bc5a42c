"""Lesion truth of a synthetic whole study, written two ways: a DICOM Segmentation
(SEG) object per annotated series, made by highdicom and referencing the source
slices, and the rows of `OUT/lesions.csv` (the format tasks/annotations.py reads).

Both are made from the same masks (the pixels `paint_lesion` painted), so reading
the SEG and reading the CSV give the same lesion slices.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from renalflow.tasks.annotations import CSV_COLUMNS, CSV_RANGES
from renalflow.tasks.synth.writer import derive_uid

SEG_LABEL = "Renal mass"
"""The segment's label: a word tasks/annotations.LESION_WORDS knows ("mass")."""

LESIONS_CSV_HEADER = [*CSV_COLUMNS, *(c for pair in CSV_RANGES for c in pair)]
"""StudyInstanceUID, SeriesInstanceUID, first/last SOPInstanceUID, z_min, z_max."""


@dataclass(frozen=True)
class LesionRange:
    """A row of `OUT/lesions.csv`: the slices of one series that show the mass, by their
    end slices and by z (mm, ImagePositionPatient as written)."""

    study_instance_uid: str
    series_instance_uid: str
    first_sop_instance_uid: str
    last_sop_instance_uid: str
    z_min: str
    z_max: str

    def row(self) -> list[str]:
        return [
            self.study_instance_uid,
            self.series_instance_uid,
            self.first_sop_instance_uid,
            self.last_sop_instance_uid,
            self.z_min,
            self.z_max,
        ]


def lesion_range(slices: list[Dataset]) -> LesionRange:
    """The range of the lesion slices of one series (any order; contiguous along z)."""
    ordered = sorted(slices, key=lambda ds: float(ds.ImagePositionPatient[2]))
    low, high = ordered[0], ordered[-1]
    return LesionRange(
        study_instance_uid=str(low.StudyInstanceUID),
        series_instance_uid=str(low.SeriesInstanceUID),
        first_sop_instance_uid=str(low.SOPInstanceUID),
        last_sop_instance_uid=str(high.SOPInstanceUID),
        z_min=f"{float(low.ImagePositionPatient[2]):.3f}",
        z_max=f"{float(high.ImagePositionPatient[2]):.3f}",
    )


def write_lesions_csv(ranges: list[LesionRange], path: Path) -> None:
    """`OUT/lesions.csv`, the file `renalflow ingest --lesions` reads."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LESIONS_CSV_HEADER)
        writer.writerows(r.row() for r in ranges)


def lesion_seg(
    slices: list[Dataset], masks: list[np.ndarray], series_number: int, study_date: date
) -> Dataset:
    """A binary DICOM SEG of the renal mass over `slices` (one series; the slices that
    show it, with the `masks` of their lesion pixels). Deterministic: its UIDs derive
    from the source series and its dates are the study's."""
    source_series = str(slices[0].SeriesInstanceUID)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEG_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=slices,
        pixel_array=np.stack(masks),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=derive_uid(source_series, "seg", "series"),
        series_number=series_number,
        sop_instance_uid=derive_uid(source_series, "seg", "sop"),
        instance_number=1,
        manufacturer="RENALFLOW SYNTHETIC HOSPITAL",
        manufacturer_model_name="renalflow synth",
        software_versions="renalflow",
        device_serial_number="0",
        series_description=f"Renal mass SEG of series {slices[0].SeriesNumber}",
    )
    # highdicom stamps the time of writing and random dimension UIDs: fix both, so the
    # same seed gives the same bytes.
    day = study_date.strftime("%Y%m%d")
    for keyword in ("InstanceCreationDate", "ContentDate", "SeriesDate"):
        setattr(seg, keyword, day)
    for keyword in ("InstanceCreationTime", "ContentTime", "SeriesTime"):
        setattr(seg, keyword, "120000")
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = f"{day}120000"
    dimension = derive_uid(source_series, "seg", "dimensions")
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = dimension
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dimension
    return seg
