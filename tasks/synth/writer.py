"""How the synthetic slices are written: scanners, transfer syntaxes, tags, pixels.

Each patient is scanned on one of four vendors' scanners (their series descriptions,
kernels, noise and signed or unsigned storage differ, as in a real export); each
series is written in one of the transfer syntaxes a PACS hands out. UIDs are derived
from the seed, so the same seed gives the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from renalflow.tasks.config import Phase

AXIAL = ("1", "0", "0", "0", "1", "0")
CORONAL = ("1", "0", "0", "0", "0", "-1")
ORIGINAL_AXIAL = ("ORIGINAL", "PRIMARY", "AXIAL")
LOCALIZER = ("ORIGINAL", "PRIMARY", "LOCALIZER")

# Transfer syntaxes the generator writes, with their default shares.
DEFAULT_SYNTAXES: dict[str, float] = {
    str(ExplicitVRLittleEndian): 0.40,
    str(ImplicitVRLittleEndian): 0.20,
    str(RLELossless): 0.25,
    str(JPEG2000Lossless): 0.15,
}


@dataclass(frozen=True)
class Vendor:
    manufacturer: str
    model: str
    signed: bool  # PixelRepresentation 1 with intercept 0, else unsigned with -1024
    kernel: str
    noise_hu: float
    descriptions: dict[Phase, tuple[str, ...]]


VENDORS = (
    Vendor(
        "SIEMENS",
        "SOMATOM Definition AS+",
        False,
        "B30f",
        11.0,
        {
            Phase.NONCONTRAST: ("Abdomen NATIVE {t} B30f", "NATIV {t}"),
            Phase.ARTERIAL: ("Abdomen ARTERIAL {t} B30f", "ART {t} Br40"),
            Phase.VENOUS: ("Abdomen PORTAL {t} B30f", "Nephro {t} Br40"),
        },
    ),
    Vendor(
        "GE MEDICAL SYSTEMS",
        "Revolution CT",
        True,
        "STANDARD",
        13.0,
        {
            Phase.NONCONTRAST: ("NON CONTRAST {t}mm", "Plain {t}"),
            Phase.ARTERIAL: ("Arterial {t}mm", "Abd {t} STND"),
            Phase.VENOUS: ("PV {t}mm", "Abd {t} STND"),
        },
    ),
    Vendor(
        "Philips",
        "IQon Spectral CT",
        False,
        "B",
        10.0,
        {
            Phase.NONCONTRAST: ("Unenhanced {t}", "Kidney NC {t}"),
            Phase.ARTERIAL: ("Corticomedullary {t}", "Arterial {t}"),
            Phase.VENOUS: ("Nephrographic {t}", "Venous {t}"),
        },
    ),
    Vendor(
        "TOSHIBA",
        "Aquilion ONE",
        False,
        "FC18",
        14.0,
        {
            Phase.NONCONTRAST: ("Plain {t}", "Abd {t} FC18"),
            Phase.ARTERIAL: ("ART {t}", "Abd {t} FC18"),
            Phase.VENOUS: ("Venous {t}", "Abd {t} FC18"),
        },
    ),
)


def choose_syntax(rng: np.random.Generator, syntaxes: dict[str, float]) -> UID:
    """One transfer syntax for a series, drawn with the given shares."""
    uids = list(syntaxes)
    weights = np.array([syntaxes[u] for u in uids], dtype=float)
    return UID(uids[int(rng.choice(len(uids), p=weights / weights.sum()))])


def derive_uid(*parts: object) -> str:
    """A UID that depends only on `parts`."""
    # With entropy sources, pydicom derives the UID from a hash: same inputs, same UID.
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def random_name(rng: np.random.Generator, length: int) -> str:
    """A hex file or folder name, as PACS exports use."""
    return "".join(rng.choice(list("0123456789ABCDEF"), size=length))


def series_folder(rng: np.random.Generator, parent: Path) -> tuple[Path, str]:
    """A new folder for one series under `parent`, and the extension its files get
    (half the series' files have none, as many PACS exports)."""
    folder = parent / random_name(rng, 8)
    folder.mkdir(parents=True, exist_ok=True)
    return folder, ".dcm" if rng.random() < 0.5 else ""


def save_new(ds: Dataset, rng: np.random.Generator, folder: Path, extension: str) -> None:
    """Save `ds` under a random name in `folder`, never over a file already written."""
    path = folder / f"{random_name(rng, 8)}{extension}"
    while path.exists():
        path = folder / f"{random_name(rng, 8)}{extension}"
    ds.save_as(path, enforce_file_format=True)


def acquisition_time(bolus_start: int, phase: Phase) -> int:
    """When a phase was acquired (seconds after midnight): the contrast phases at their
    delay after the bolus, the unenhanced scan five minutes before it."""
    delay = {Phase.ARTERIAL: 35, Phase.VENOUS: 85}.get(phase, 0)
    return bolus_start + delay if delay else bolus_start - 300


def add_noise(rng: np.random.Generator, vendor: Vendor, thickness: float, hu: np.ndarray) -> None:
    """The scanner's quantum noise, in place: thinner slices are noisier, and tube current
    modulation changes the dose, and so the noise, from slice to slice."""
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    modulation = float(np.exp(rng.normal(0.0, 0.3)))
    hu += vendor.noise_hu * modulation * (thickness / 3.0) ** -0.5 * noise


@dataclass(frozen=True)
class StudyTags:
    """What every slice of a patient's study shares."""

    patient_name: str
    patient_id: str
    vendor: Vendor
    spacing: float  # mm per pixel
    study_uid: str
    accession: str
    study_date: date
    birth: date
    sex: str
    bolus_start: int  # seconds after midnight
    description: str = "CT ABDOMEN KIDNEYS"  # StudyDescription
    body_part: str = "ABDOMEN"  # BodyPartExamined
    study_id: str = "1"


@dataclass(frozen=True)
class SeriesTags:
    """What every slice of one series shares."""

    series_uid: str
    number: int
    phase: Phase
    description: str
    thickness: float
    syntax: UID
    acquired: int  # seconds after midnight
    image_type: tuple[str, ...] = ORIGINAL_AXIAL
    orientation: tuple[str, ...] = AXIAL  # ImageOrientationPatient
    acquisition: int = 1  # AcquisitionNumber: two reconstructions of one scan share it
    pixel_spacing: tuple[float, float] | None = None  # row, column (default: the study's)


def slice_dataset(
    study: StudyTags,
    series: SeriesTags,
    sop_uid: str,
    index: int,
    z: float,
    hu: np.ndarray,
    outside_fov: np.ndarray,
    y: float | None = None,
) -> Dataset:
    """The dataset of one slice (`index` in its series, at `z` mm) with `hu` as its
    pixels, encoded in the series' transfer syntax; ready for `save_as`. A coronal
    image (a scout) sits at `y` mm with `z` its top row."""
    ds = _base_dataset(sop_uid, series.syntax)
    _fill_tags(ds, study, series, sop_uid, index, z, hu.shape, y)
    stored, padding = _to_stored(hu, study.vendor, outside_fov)
    if padding is not None:
        ds.PixelPaddingValue = padding
    _set_pixels(ds, stored, series.syntax)
    return ds


def _base_dataset(sop_uid: str, syntax: UID) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "RENALFLOW_SYNTH"
    ds = Dataset()
    ds.file_meta = meta
    return ds


def _hms(seconds: int) -> str:
    seconds %= 86400
    return f"{seconds // 3600:02d}{(seconds // 60) % 60:02d}{seconds % 60:02d}"


def _fill_tags(
    ds: Dataset,
    study: StudyTags,
    series: SeriesTags,
    sop_uid: str,
    index: int,
    z: float,
    shape: tuple[int, ...],
    y: float | None,
) -> None:
    vendor, spacing = study.vendor, study.spacing
    rows, columns = int(shape[0]), int(shape[1])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(series.image_type)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study.study_date.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.AcquisitionDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.StudyTime = _hms(study.bolus_start - 600)
    ds.SeriesTime = _hms(series.acquired)
    ds.AcquisitionTime = _hms(series.acquired)
    ds.ContentTime = _hms(series.acquired)
    ds.AccessionNumber = study.accession
    ds.Modality = "CT"
    ds.Manufacturer = vendor.manufacturer
    ds.InstitutionName = "RENALFLOW SYNTHETIC HOSPITAL"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = vendor.model
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth.strftime("%Y%m%d")
    ds.PatientSex = study.sex
    ds.BodyPartExamined = study.body_part
    ds.SliceThickness = f"{series.thickness:.1f}"
    ds.KVP = "120"
    ds.ConvolutionKernel = vendor.kernel
    ds.PatientPosition = "FFS"
    if series.phase is not Phase.NONCONTRAST:
        ds.ContrastBolusAgent = "Omnipaque 350"
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = "90"
        ds.ContrastBolusStartTime = _hms(study.bolus_start)
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.number
    ds.AcquisitionNumber = series.acquisition
    ds.InstanceNumber = index + 1
    half = columns / 2 * spacing
    y_mm = -half if y is None else y
    ds.ImagePositionPatient = [f"{-half:.3f}", f"{y_mm:.3f}", f"{z:.3f}"]
    ds.ImageOrientationPatient = list(series.orientation)
    ds.FrameOfReferenceUID = derive_uid(study.study_uid, "for")
    ds.PositionReferenceIndicator = ""
    if series.orientation == AXIAL:
        ds.SliceLocation = f"{z:.3f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    row_spacing, column_spacing = series.pixel_spacing or (spacing, spacing)
    ds.PixelSpacing = [f"{row_spacing:.6f}", f"{column_spacing:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 1 if vendor.signed else 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "0" if vendor.signed else "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"


def _to_stored(
    hu: np.ndarray, vendor: Vendor, outside: np.ndarray
) -> tuple[np.ndarray, int | None]:
    """HU to 12-bit stored values; signed vendors pad outside the field of view."""
    if vendor.signed:
        stored = np.clip(np.rint(hu), -2048, 2047).astype(np.int16)
        stored[outside] = -2000
        return stored, -2000
    return np.clip(np.rint(hu) + 1024, 0, 4095).astype(np.uint16), None


def _set_pixels(ds: Dataset, stored: np.ndarray, syntax: UID) -> None:
    if syntax.is_compressed:
        ds.compress(syntax, stored, generate_instance_uid=False)
    else:
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = syntax
