"""Whole studies, as a hospital archive holds them.

A patient's abdominal study has one axial series per contrast phase, each covering the
scan range from the liver dome to the iliac crest at its slice thickness; the renal mass
shows on a contiguous sub-range of one kidney. Some patients (drawn from their seed, and
recorded in `OUT/series.csv`) also have a scout, one phase reconstructed a second time
with thin slices (same acquisition and FrameOfReferenceUID, another series), a chest CT
study (no kidneys) and a head CT study. The lesion truth is written as a DICOM SEG per
annotated series (for `seg_share` of the patients) and always as rows of
`OUT/lesions.csv`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from renalflow.tasks.config import Phase
from renalflow.tasks.synth.anatomy import (
    Anatomy,
    build_anatomy,
    build_trunk,
    head_tissue,
    paint_bowel_gas,
    paint_kidneys,
    phase_lut,
)
from renalflow.tasks.synth.lesions import (
    Lesion,
    lesion_half_length,
    paint_lesion,
    place_lesion,
)
from renalflow.tasks.synth.seg import LesionRange, lesion_range, lesion_seg
from renalflow.tasks.synth.writer import (
    CORONAL,
    LOCALIZER,
    VENDORS,
    SeriesTags,
    StudyTags,
    Vendor,
    acquisition_time,
    add_noise,
    choose_syntax,
    derive_uid,
    random_name,
    save_new,
    series_folder,
    slice_dataset,
)

if TYPE_CHECKING:
    from renalflow.tasks.synth.archive import PatientPlan, SynthConfig

THICKNESSES = (1.5, 2.0, 2.5, 3.0, 5.0)
THIN = (0.625, 1.0, 1.25)  # thin reconstructions, below the paper's 1.5-5 mm
SPACING_512 = (0.68, 0.86)  # mm per pixel at 512 x 512 (a 350-440 mm field of view)


class StudyKind(StrEnum):
    """Which study a series belongs to (the `study` column of series.csv)."""

    ABDOMEN = "abdomen"
    CHEST = "chest"
    HEAD = "head"


class SeriesKind(StrEnum):
    """What a series is (the `kind` column of series.csv)."""

    AXIAL = "axial"  # original axial CT slices
    LOCALIZER = "localizer"  # one scout image
    SEG = "seg"  # the lesion's DICOM SEG


@dataclass(frozen=True)
class SeriesRecord:
    """A row of `OUT/series.csv`: what each series of the archive is."""

    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    study: StudyKind
    kind: SeriesKind
    body_part_examined: str
    series_description: str
    phase: str
    slice_thickness: float | None
    slices: int
    lesion_slices: int
    twin_of: str = ""  # the other reconstruction of the same acquisition
    annotated: str = ""  # "seg+csv", "csv", or "" (no lesion truth: not abdominal)


SERIES_CSV_HEADER = list(SeriesRecord.__dataclass_fields__)


@dataclass
class PatientResult:
    """What writing one patient made."""

    series: int = 0
    slices: int = 0
    by_syntax: dict[str, int] = field(default_factory=dict)
    records: list[SeriesRecord] = field(default_factory=list)
    lesions: list[LesionRange] = field(default_factory=list)
    seg_objects: int = 0

    def count(self, syntax: str) -> None:
        self.by_syntax[syntax] = self.by_syntax.get(syntax, 0) + 1
        self.slices += 1


@dataclass(frozen=True)
class _Patient:
    plan: PatientPlan
    config: SynthConfig
    vendor: Vendor
    spacing: float
    anatomy: Anatomy
    lesion: Lesion
    lesion_z: float  # the lesion's centre, mm from the kidneys' mid-plane
    table_z: float  # the kidneys' mid-plane in patient coordinates
    folder: Path


def scan_positions(
    top: float, bottom: float, thickness: float, limits: tuple[int, int], cover: tuple[float, float]
) -> list[float]:
    """z (mm, head to feet) of a series from `top` to `bottom` at `thickness`, its
    number of slices clipped to `limits`; a clipped range stays around `cover` (the mass)."""
    low, high = limits
    n = int(np.clip(round((top - bottom) / thickness) + 1, low, high))
    span = (n - 1) * thickness
    start = (top + bottom) / 2 + span / 2
    start = max(start, cover[1] + thickness)  # keep the mass inside
    if start - span > cover[0] - thickness:
        start = min(start, cover[0] - thickness + span)
    return [start - i * thickness for i in range(n)]


def choose_phases(rng: np.random.Generator) -> list[Phase]:
    """The contrast phases a patient's study has, with a hospital's mix."""
    roll = rng.random()
    if roll < 0.5:
        return [Phase.NONCONTRAST, Phase.ARTERIAL, Phase.VENOUS]
    if roll < 0.85:
        return (
            [Phase.NONCONTRAST, Phase.VENOUS]
            if rng.random() < 0.5
            else [Phase.ARTERIAL, Phase.VENOUS]
        )
    if roll < 0.97:
        return [Phase.VENOUS]
    return [Phase.NONCONTRAST]  # contrast allergy, as 9 of the study's patients


@dataclass(frozen=True)
class DrawnPatient:
    """What a patient's abdominal study starts from. Both kinds of archive draw it the
    same way, in the same order, so a patient is the same person in both."""

    vendor: Vendor
    spacing: float  # mm per pixel
    anatomy: Anatomy
    lesion: Lesion
    phases: list[Phase]
    tags: StudyTags
    folder: str  # the patient's folder under OUT/archive/
    table_z: float  # the kidneys' mid-plane in patient coordinates


def draw_patient(
    rng: np.random.Generator, plan: PatientPlan, config: SynthConfig, matrix: int
) -> DrawnPatient:
    """Draw `plan`'s patient at `matrix` pixels a side: scanner, body, mass, contrast
    phases, study date, demographics, folder, bolus time and table position."""
    vendor = VENDORS[int(rng.integers(len(VENDORS)))]
    spacing = float(rng.uniform(*SPACING_512)) * 512 / matrix
    anatomy = build_anatomy(rng, spacing, matrix)
    lesion = place_lesion(rng, anatomy, plan.label, plan.histology)
    phases = choose_phases(rng)
    year = int(rng.integers(config.first_study_year, config.last_study_year + 1))
    study_date = date(year, 1, 1) + timedelta(days=int(rng.integers(0, 365)))
    birth = date(int(rng.integers(1935, 1990)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    sex = str(rng.choice(["M", "F"]))
    folder = random_name(rng, 2)
    bolus_start = 10 * 3600 + int(rng.integers(0, 6 * 3600))
    table_z = float(rng.uniform(-250.0, -120.0))
    tags = StudyTags(
        patient_name=f"SYNTH^PATIENT{plan.index + 1:05d}",
        patient_id=plan.patient_id,
        vendor=vendor,
        spacing=spacing,
        study_uid=derive_uid(config.seed, plan.patient_id, "study"),
        accession=f"A{plan.seed % 10**8:08d}",
        study_date=study_date,
        birth=birth,
        sex=sex,
        bolus_start=bolus_start,
    )
    return DrawnPatient(vendor, spacing, anatomy, lesion, phases, tags, folder, table_z)


def write_whole_patient(plan: PatientPlan, config: SynthConfig, archive: Path) -> PatientResult:
    """Write every study of one patient (whole studies); deterministic for `plan.seed`."""
    rng = np.random.default_rng(plan.seed)
    drawn = draw_patient(rng, plan, config, config.matrix)
    anatomy, lesion = drawn.anatomy, drawn.lesion
    # A second generator for what curated archives never drew, so the patient's body,
    # mass and phases are the same in both kinds of archive.
    extra = np.random.default_rng([plan.seed, 1])
    anatomy.trunk = build_trunk(extra, anatomy)
    reach = max(0.0, 40.0 - lesion_half_length(lesion))  # the mass stays on the kidney
    lesion_z = float(extra.uniform(-reach, reach))
    chest, head, scout, twin, seg = (
        extra.random() < share
        for share in (
            config.chest_share,
            config.head_share,
            config.scout_share,
            config.twin_share,
            config.seg_share,
        )
    )
    patient = _Patient(
        plan=plan,
        config=config,
        vendor=drawn.vendor,
        spacing=drawn.spacing,
        anatomy=anatomy,
        lesion=lesion,
        lesion_z=lesion_z,
        table_z=drawn.table_z,
        folder=archive / drawn.folder,
    )
    abdomen, phases, study_date = drawn.tags, drawn.phases, drawn.tags.study_date
    result = PatientResult()
    _write_abdomen(rng, extra, patient, abdomen, phases, scout, twin, seg, result)
    others = (
        (chest, StudyKind.CHEST, 400, "C", "CT THORAX", "CHEST", "2", _write_chest),
        (head, StudyKind.HEAD, 900, "H", "CT HEAD", "HEAD", "3", _write_head),
    )
    for wanted, kind, days, prefix, description, body_part, study_id, write in others:
        if not wanted:
            continue
        study = replace(
            abdomen,
            study_uid=derive_uid(config.seed, plan.patient_id, "study", kind),
            accession=f"{prefix}{plan.seed % 10**8:08d}",
            study_date=study_date + timedelta(days=int(extra.integers(-days, days))),
            description=description,
            body_part=body_part,
            study_id=study_id,
        )
        write(rng, patient, study, result)
    return result


def _write_axial(
    rng: np.random.Generator,
    patient: _Patient,
    study: StudyTags,
    series: SeriesTags,
    positions: list[float],
    draw: str,
    result: PatientResult,
) -> tuple[list[Dataset], list[np.ndarray]]:
    """One axial series at `positions` (mm from the kidneys' mid-plane); returns the
    slices that show the mass and their masks. `draw` is the study kind."""
    anatomy, spacing = patient.anatomy, patient.spacing
    folder, extension = series_folder(rng, patient.folder)
    lut = phase_lut(series.phase)
    shown: list[Dataset] = []
    masks: list[np.ndarray] = []
    for i, dz in enumerate(positions):
        if draw == StudyKind.HEAD:
            hu = lut[head_tissue(anatomy.size, anatomy.mm, dz)]
            z = patient.table_z + anatomy.liver_dome + 450.0 + dz
        else:
            hu = lut[anatomy.tissue_at(dz)]
            z = patient.table_z + dz
            if dz < anatomy.liver_dome - 20.0:  # bowel gas below the diaphragm only
                paint_bowel_gas(rng, anatomy, spacing, hu)
        mask = None
        if draw == StudyKind.ABDOMEN:
            paint_kidneys(anatomy, spacing, dz, series.phase, hu)
            mask = paint_lesion(
                series.number, patient.lesion, spacing, dz - patient.lesion_z, series.phase, hu
            )
        add_noise(rng, patient.vendor, series.thickness, hu)
        sop_uid = derive_uid(
            patient.config.seed, patient.plan.patient_id, "sop", study.study_uid, series.number, i
        )
        ds = slice_dataset(study, series, sop_uid, i, z, hu, anatomy.outside_fov)
        save_new(ds, rng, folder, extension)
        result.count(series.syntax.name)
        if mask is not None:
            shown.append(ds)
            masks.append(mask)
    result.series += 1
    return shown, masks


def _write_abdomen(
    rng: np.random.Generator,
    extra: np.random.Generator,
    patient: _Patient,
    study: StudyTags,
    phases: list[Phase],
    scout: bool,
    twin: bool,
    seg: bool,
    result: PatientResult,
) -> None:
    anatomy, config = patient.anatomy, patient.config
    top = anatomy.liver_dome + float(extra.uniform(0.0, 15.0))
    bottom = anatomy.trunk.crest_z - float(extra.uniform(0.0, 20.0)) if anatomy.trunk else -100.0
    half = lesion_half_length(patient.lesion)
    cover = (patient.lesion_z - half, patient.lesion_z + half)
    annotated: list[tuple[SeriesTags, list[Dataset], list[np.ndarray]]] = []
    # The thin reconstruction is of the last contrast phase (or the only phase).
    twin_phase = len(phases) - 1 if twin else -1
    number = 2
    for p_index, phase in enumerate(phases):
        syntax = choose_syntax(rng, config.syntaxes)
        thickness = float(rng.choice(THICKNESSES if p_index != twin_phase else (3.0, 5.0)))
        acquired = acquisition_time(study.bolus_start, phase)
        descriptions = patient.vendor.descriptions[phase]
        template = str(rng.choice(descriptions))
        reconstructions = [thickness]
        if p_index == twin_phase:
            reconstructions.append(float(extra.choice(THIN)))
        uids: list[str] = []
        for recon, t in enumerate(reconstructions):
            series = SeriesTags(
                series_uid=derive_uid(
                    config.seed, patient.plan.patient_id, "series", study.study_uid, number
                ),
                number=number,
                phase=phase,
                description=template.format(t=f"{t:.1f}" if round(t, 1) == t else f"{t:g}"),
                thickness=t,
                syntax=syntax if recon == 0 else choose_syntax(extra, config.syntaxes),
                acquired=acquired,
                acquisition=p_index + 1,
            )
            positions = scan_positions(top, bottom, t, config.study_slices, cover)
            shown, masks = _write_axial(
                rng, patient, study, series, positions, StudyKind.ABDOMEN, result
            )
            annotated.append((series, shown, masks))
            uids.append(series.series_uid)
            annotation = ("seg+csv" if seg else "csv") if shown else ""
            result.records.append(
                _series_record(
                    patient,
                    study,
                    StudyKind.ABDOMEN,
                    SeriesKind.AXIAL,
                    series,
                    slices=len(positions),
                    lesion_slices=len(shown),
                    annotated=annotation,
                )
            )
            number += 1
        if len(uids) == 2:  # name each reconstruction's twin
            a, b = result.records[-2], result.records[-1]
            result.records[-2] = replace(a, twin_of=uids[1])
            result.records[-1] = replace(b, twin_of=uids[0])
    for series, shown, masks in annotated:
        if not shown:
            continue
        result.lesions.append(lesion_range(shown))
        if seg:
            seg_ds = lesion_seg(shown, masks, 900 + series.number, study.study_date)
            folder, extension = series_folder(rng, patient.folder)
            save_new(seg_ds, rng, folder, extension)
            result.seg_objects += 1
            result.series += 1
            result.records.append(
                SeriesRecord(
                    patient_id=patient.plan.patient_id,
                    study_instance_uid=study.study_uid,
                    series_instance_uid=str(seg_ds.SeriesInstanceUID),
                    study=StudyKind.ABDOMEN,
                    kind=SeriesKind.SEG,
                    body_part_examined=study.body_part,
                    series_description=str(seg_ds.SeriesDescription),
                    phase="",
                    slice_thickness=None,
                    slices=1,
                    lesion_slices=len(shown),
                )
            )
    if scout:
        _write_scout(rng, patient, study, top + 40.0, bottom - 40.0, result)


def _series_record(
    patient: _Patient,
    study: StudyTags,
    study_kind: StudyKind,
    kind: SeriesKind,
    series: SeriesTags,
    *,
    slices: int,
    lesion_slices: int = 0,
    annotated: str = "",
) -> SeriesRecord:
    """The series.csv row of a series written from `series`'s tags (a localizer's row
    gives no slice thickness)."""
    return SeriesRecord(
        patient_id=patient.plan.patient_id,
        study_instance_uid=study.study_uid,
        series_instance_uid=series.series_uid,
        study=study_kind,
        kind=kind,
        body_part_examined=study.body_part,
        series_description=series.description,
        phase=series.phase.value,
        slice_thickness=None if kind is SeriesKind.LOCALIZER else series.thickness,
        slices=slices,
        lesion_slices=lesion_slices,
        annotated=annotated,
    )


def _write_scout(
    rng: np.random.Generator,
    patient: _Patient,
    study: StudyTags,
    top: float,
    bottom: float,
    result: PatientResult,
) -> None:
    """One coronal scout (ORIGINAL/PRIMARY/LOCALIZER): the attenuation summed front to
    back, one row per z from `top` to `bottom`."""
    anatomy = patient.anatomy
    rows = anatomy.size
    row_mm = (top - bottom) / rows
    lut = phase_lut(Phase.NONCONTRAST)
    image = np.empty((rows, anatomy.size), dtype=np.float32)
    for r in range(rows):
        image[r] = lut[anatomy.tissue_at(top - r * row_mm)].mean(axis=0)
    add_noise(rng, patient.vendor, 5.0, image)
    series = SeriesTags(
        series_uid=derive_uid(
            patient.config.seed, patient.plan.patient_id, "series", study.study_uid, 1
        ),
        number=1,
        phase=Phase.NONCONTRAST,
        description="Topogram 0.6 T20f" if patient.vendor.manufacturer == "SIEMENS" else "Scout",
        thickness=0.6,
        syntax=ExplicitVRLittleEndian,
        acquired=study.bolus_start - 900,
        image_type=LOCALIZER,
        orientation=CORONAL,
        acquisition=0,
        pixel_spacing=(row_mm, patient.spacing),
    )
    sop_uid = derive_uid(patient.config.seed, patient.plan.patient_id, "sop", study.study_uid, 1, 0)
    no_pad = np.zeros(image.shape, dtype=bool)
    ds = slice_dataset(study, series, sop_uid, 0, patient.table_z + top, image, no_pad, y=0.0)
    folder, extension = series_folder(rng, patient.folder)
    save_new(ds, rng, folder, extension)
    result.count(series.syntax.name)
    result.series += 1
    result.records.append(
        _series_record(patient, study, StudyKind.ABDOMEN, SeriesKind.LOCALIZER, series, slices=1)
    )


def _write_other(
    rng: np.random.Generator,
    patient: _Patient,
    study: StudyTags,
    kind: StudyKind,
    phase: Phase,
    description: str,
    positions_of: tuple[float, float],
    result: PatientResult,
) -> None:
    config = patient.config
    thickness = float(rng.choice((1.0, 2.0, 3.0, 5.0)))
    top, bottom = positions_of
    series = SeriesTags(
        series_uid=derive_uid(config.seed, patient.plan.patient_id, "series", study.study_uid, 2),
        number=2,
        phase=phase,
        description=description.format(t=f"{thickness:g}"),
        thickness=thickness,
        syntax=choose_syntax(rng, config.syntaxes),
        acquired=study.bolus_start + (70 if phase is Phase.VENOUS else -300),
    )
    # Only the abdominal series have a smallest number of slices.
    limits = (1, config.study_slices[1])
    positions = scan_positions(top, bottom, thickness, limits, (bottom, bottom))
    _write_axial(rng, patient, study, series, positions, kind, result)
    result.records.append(
        _series_record(patient, study, kind, SeriesKind.AXIAL, series, slices=len(positions))
    )


def _write_chest(
    rng: np.random.Generator, patient: _Patient, study: StudyTags, result: PatientResult
) -> None:
    """A contrast chest CT from the lung apices to just below the liver dome: no kidney."""
    dome = patient.anatomy.liver_dome
    phase = Phase.VENOUS if rng.random() < 0.7 else Phase.NONCONTRAST
    text = "Thorax {t} B31f" if patient.vendor.manufacturer == "SIEMENS" else "CHEST {t}mm"
    reach = (dome + 230.0, dome - 25.0)
    _write_other(rng, patient, study, StudyKind.CHEST, phase, text, reach, result)


def _write_head(
    rng: np.random.Generator, patient: _Patient, study: StudyTags, result: PatientResult
) -> None:
    """A non-contrast head CT from the skull base to the vertex."""
    text = "Head {t} H31s" if patient.vendor.manufacturer == "SIEMENS" else "BRAIN {t}mm"
    _write_other(rng, patient, study, StudyKind.HEAD, Phase.NONCONTRAST, text, (150.0, 0.0), result)
