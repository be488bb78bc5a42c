"""Read one DICOM file and decide whether it is a usable axial CT slice.

Tolerant when reading, explicit when refusing: files without a preamble or file
meta are still read, and every refusal is a `RejectedFile` whose message a
radiographer understands ("modality MR, not CT").
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Any

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from renalflow.tasks.config import Phase, PreprocessConfig
from renalflow.tasks.errors import InputError

# SOP classes whose single file holds many frames (not single-slice CT).
_MULTIFRAME_CT = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}


class RejectReason(StrEnum):
    """Why a file did not become a slice: the short code next to the readable reason."""

    NOT_DICOM = "not_dicom"
    TRUNCATED = "truncated"
    NOT_CT = "not_ct"
    NOT_AXIAL = "not_axial"
    NOT_ORIGINAL = "not_original"
    LOCALIZER = "localizer"
    MULTIFRAME = "multiframe"
    NO_PIXEL_DATA = "no_pixel_data"
    NO_RESCALE = "no_rescale"
    MISSING_TAG = "missing_tag"
    UNSUPPORTED_PIXELS = "unsupported_pixels"
    DUPLICATE = "duplicate"
    DECODE_ERROR = "decode_error"
    UNREADABLE = "unreadable"
    CRASHED_WORKER = "crashed_worker"
    TOO_LARGE = "too_large"
    NON_IMAGE = "non_image"  # SEG, SR, KO, PR, RT objects: listed as what they are


NON_IMAGE_MODALITIES: dict[str, str] = {
    "SEG": "DICOM SEG (segmentation)",
    "SR": "structured report",
    "KO": "key object selection",
    "PR": "presentation state",
    "RTSTRUCT": "RT structure set",
    "RTPLAN": "RT plan",
    "RTDOSE": "RT dose",
    "RTRECORD": "RT treatment record",
    "REG": "registration",
    "DOC": "encapsulated document",
    "ECG": "ECG waveform",
}
"""Objects in an archive that are not images, by Modality, as the ingest summary names
them (not as unreadable files)."""


def non_image_kind(ds: Dataset) -> str | None:
    """What a non-image object is (NON_IMAGE_MODALITIES), or None for an image."""
    return NON_IMAGE_MODALITIES.get(read_text(ds, "Modality").upper())


class RejectedFile(InputError):
    """A file that is not a usable axial CT slice; `code` groups reasons for summaries."""

    def __init__(self, code: RejectReason, reason: str) -> None:
        super().__init__(reason)
        self.code = RejectReason(code)
        self.reason = reason


@dataclass(frozen=True)
class SliceHeader:
    """What renalflow keeps from a slice's header (names as the DICOM standard spells them)."""

    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    instance_number: int | None
    z: float | None
    phase: str
    slice_thickness: float | None
    pixel_spacing: tuple[float, float] | None
    manufacturer: str
    transfer_syntax: str
    study_date: str
    series_description: str
    kvp: float | None
    photometric_interpretation: str
    rows: int
    columns: int
    rescale_slope: float | None
    rescale_intercept: float | None
    window_center_file: float | None
    window_width_file: float | None
    # What series selection reads (tasks/selection.py).
    body_part_examined: str = ""
    image_type: str = ""  # the values joined with "\\", as the standard writes them
    frame_of_reference_uid: str = ""
    acquisition_number: int | None = None


def read_dataset(fp: IO[bytes] | str, *, with_pixels: bool) -> Dataset:
    """Read a DICOM dataset; files without preamble or file meta are read too.

    Without `with_pixels` the pixel data is skipped (deferred), not read, but its
    presence and length are still checked against the file size, so a truncated file
    is recognised from its header alone. Raises `RejectedFile` (NOT_DICOM, TRUNCATED,
    NO_PIXEL_DATA) with a message that names the problem.
    """
    size = _size(fp)
    try:
        ds = _read(fp, with_pixels=with_pixels, force=False)
    except InvalidDicomError:
        ds = None
    except (EOFError, ValueError, OSError, KeyError, TypeError, AttributeError) as err:
        raise _read_failure(err) from err
    if ds is None:
        # No "DICM" prefix: many archives hold raw datasets without the Part 10 header.
        if hasattr(fp, "seek"):
            fp.seek(0)
        try:
            ds = _read(fp, with_pixels=with_pixels, force=True)
        except (EOFError, ValueError, OSError, KeyError, TypeError, AttributeError) as err:
            raise RejectedFile(
                RejectReason.NOT_DICOM,
                f"not a DICOM file: no 'DICM' marker and the content does not parse as a "
                f"dataset ({err})",
            ) from err
        if "SOPClassUID" not in ds and "Modality" not in ds:
            raise RejectedFile(
                RejectReason.NOT_DICOM,
                "not a DICOM file: no 'DICM' marker and no SOPClassUID or Modality element",
            )
        _guess_transfer_syntax(ds)
    _check_complete(ds, size)
    return ds


def _size(fp: IO[bytes] | str) -> int | None:
    if isinstance(fp, str):
        return os.path.getsize(fp)
    try:
        here = fp.tell()
        end = fp.seek(0, os.SEEK_END)
        fp.seek(here)
        return int(end)
    except (OSError, AttributeError):
        return None


_IMAGE_TAGS = ("SOPInstanceUID", "Rows", "Columns", "ImageOrientationPatient")


def _check_complete(ds: Dataset, size: int | None) -> None:
    """Tell a truncated file from one that never had pixel data."""
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
    if elem is not None:
        length = getattr(elem, "length", None)
        tell = getattr(elem, "value_tell", None)
        # Encapsulated (undefined length) and deflated data cannot be sized from the header.
        undefined = length == 0xFFFFFFFF
        syntax = read_text(ds.file_meta, "TransferSyntaxUID")
        deflated = syntax == str(DeflatedExplicitVRLittleEndian)
        sized = size is not None and tell is not None and length is not None
        if sized and not undefined and not deflated:
            assert size is not None and tell is not None and length is not None
            if tell + length > size:
                raise RejectedFile(
                    RejectReason.TRUNCATED,
                    f"pixel data ends early (truncated file): {size - tell} of {length} bytes",
                )
        return
    if read_text(ds, "Modality").upper() != "CT":
        return  # other modalities (and files without one) are refused for what they are
    missing = [k for k in _IMAGE_TAGS if not _values(ds, k)]
    if missing:
        raise RejectedFile(
            RejectReason.TRUNCATED,
            f"file ends after {size if size is not None else 'an unknown number of'} bytes "
            f"without pixel data and without {', '.join(missing)} (truncated file)",
        )
    raise RejectedFile(RejectReason.NO_PIXEL_DATA, "no pixel data in the file")


def _read(fp: IO[bytes] | str, *, with_pixels: bool, force: bool) -> Dataset:
    if with_pixels:
        return pydicom.dcmread(fp, force=force)
    return pydicom.dcmread(fp, force=force, defer_size=4096)


def _read_failure(err: Exception) -> RejectedFile:
    text = str(err) or type(err).__name__
    if isinstance(err, EOFError) or "end of file" in text.lower() or "eof" in text.lower():
        return RejectedFile(
            RejectReason.TRUNCATED, f"file ends inside its header (truncated file): {text}"
        )
    return RejectedFile(RejectReason.UNREADABLE, f"DICOM header cannot be parsed: {text}")


def _guess_transfer_syntax(ds: Dataset) -> None:
    """Give a dataset read without file meta the transfer syntax it was read with."""
    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        return
    implicit, little = ds.original_encoding
    if implicit:
        uid = ImplicitVRLittleEndian
    elif little is False:
        uid = ExplicitVRBigEndian
    else:
        uid = ExplicitVRLittleEndian
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


def _values(ds: Dataset, keyword: str) -> list[str]:
    """String values of an element without pydicom's per-element conversion.

    Header checks run on every file of an archive, so string elements are decoded
    straight from their raw bytes (UTF-8, else Latin-1); converted elements fall back
    to their value.
    """
    elem = ds.get_item(tag_for_keyword(keyword) or 0)
    if elem is None:
        return []
    if isinstance(elem, RawDataElement):
        raw = elem.value
        if not raw:
            return []
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        return [v.strip(" \x00") for v in text.split("\\")]
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return [str(v).strip() for v in value]
    return [str(value).strip()]


def read_us(ds: Dataset, keyword: str) -> int | None:
    """An unsigned short (US) element, read from its raw bytes when still raw."""
    elem = ds.get_item(tag_for_keyword(keyword) or 0)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        raw = elem.value
        if not raw or len(raw) < 2:
            return None
        return int.from_bytes(raw[:2], "little" if elem.is_little_endian else "big")
    value = elem.value
    return int(value) if isinstance(value, int) else None


def read_text(ds: Dataset, keyword: str) -> str:
    """A string element's value (multiple values joined with a backslash), "" if absent."""
    values = _values(ds, keyword)
    return "\\".join(values) if len(values) > 1 else (values[0] if values else "")


def _float(ds: Dataset, keyword: str) -> float | None:
    values = _values(ds, keyword)
    if not values or not values[0]:
        return None
    try:
        out = float(values[0])
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def _floats(ds: Dataset, keyword: str) -> list[float] | None:
    try:
        return [float(v) for v in _values(ds, keyword)]
    except ValueError:
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _float(ds, keyword)
    return int(value) if value is not None else None


def slice_normal(orientation: Any) -> np.ndarray:
    """Unit normal of a slice from ImageOrientationPatient (row x column direction cosines)."""
    values = [float(v) for v in orientation]
    if len(values) != 6:
        raise ValueError(f"ImageOrientationPatient needs 6 values, got {len(values)}")
    row, col = np.array(values[:3]), np.array(values[3:])
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise ValueError("ImageOrientationPatient row and column directions are parallel")
    return normal / norm


def check_axial(orientation: Any, max_angle_deg: float) -> np.ndarray:
    """Return the slice normal, or reject a slice that is not axial within `max_angle_deg`."""
    try:
        normal = slice_normal(orientation)
    except (TypeError, ValueError) as err:
        raise RejectedFile(
            RejectReason.MISSING_TAG, f"ImageOrientationPatient is unusable: {err}"
        ) from err
    angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if angle > max_angle_deg:
        plane = "coronal" if abs(normal[1]) >= abs(normal[0]) else "sagittal"
        raise RejectedFile(
            RejectReason.NOT_AXIAL,
            f"not axial: slice normal is {angle:.0f} degrees from the feet-head axis "
            f"(looks {plane}; limit {max_angle_deg:g} degrees). Reformats are not used; "
            "raise max_axial_angle_deg only for gantry-tilted acquisitions",
        )
    return normal


_PHASE_WORDS: list[tuple[Phase, re.Pattern[str]]] = [
    (
        Phase.NONCONTRAST,
        re.compile(
            r"\b(non[- ]?contrast|without contrast|w/?o contrast|native|nativ|plain|"
            r"unenhanced|non[- ]?enhanced|pre[- ]?contrast|nc|ncct)\b",
            re.I,
        ),
    ),
    (Phase.ARTERIAL, re.compile(r"\b(arterial|arteriel|art|corticomedullary|cmp|angio)\b", re.I)),
    (
        Phase.VENOUS,
        re.compile(
            r"\b(venous|ven[oø]s|portal|portovenous|pv|nephrographic|nephro|delayed|"
            r"excretory|urographic)\b",
            re.I,
        ),
    ),
]


def _seconds(value: str) -> float | None:
    """DICOM TM ("HHMMSS.frac") to seconds after midnight."""
    text = value.strip().replace(":", "")
    if len(text) < 2 or not text[:2].isdigit():
        return None
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        secs = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + secs


def detect_phase(ds: Dataset) -> Phase:
    """Infer the contrast phase from the tags.

    Order: words in SeriesDescription/ProtocolName (what technologists type); then the
    delay from ContrastBolusStartTime to AcquisitionTime when contrast was given
    (below 50 s arterial, 50-180 s venous); then an empty ContrastBolusAgent means no
    contrast. Anything else is `unknown` rather than a guess.
    """
    text = " ".join(read_text(ds, k) for k in ("SeriesDescription", "ProtocolName"))
    text = text.replace("_", " ")
    for phase, pattern in _PHASE_WORDS:
        if pattern.search(text):
            return phase
    agent = read_text(ds, "ContrastBolusAgent")
    if agent:
        start = _seconds(read_text(ds, "ContrastBolusStartTime"))
        acquired = _seconds(read_text(ds, "AcquisitionTime"))
        if start is not None and acquired is not None:
            delay = acquired - start
            if 0 <= delay < 50:
                return Phase.ARTERIAL
            if 50 <= delay <= 180:
                return Phase.VENOUS
        return Phase.UNKNOWN
    if "ContrastBolusAgent" in ds:
        return Phase.NONCONTRAST
    return Phase.UNKNOWN


def read_header(ds: Dataset, config: PreprocessConfig) -> SliceHeader:
    """Check that `ds` is an original axial CT slice and pull out what the store keeps.

    Raises `RejectedFile` with a readable reason for anything else.
    """
    modality = read_text(ds, "Modality")
    if not modality:
        raise RejectedFile(
            RejectReason.MISSING_TAG, "no Modality element: cannot confirm the image is CT"
        )
    if modality.upper() != "CT":
        raise RejectedFile(RejectReason.NOT_CT, f"modality {modality}, not CT")
    sop_class = read_text(ds, "SOPClassUID")
    frames = _int(ds, "NumberOfFrames")
    if sop_class in _MULTIFRAME_CT or (frames is not None and frames > 1):
        raise RejectedFile(
            RejectReason.MULTIFRAME,
            f"multi-frame CT ({frames or 'enhanced'} frames in one file): export the series "
            "as single-frame images",
        )
    image_type = [v.upper() for v in _values(ds, "ImageType")]
    if "LOCALIZER" in image_type:
        raise RejectedFile(RejectReason.LOCALIZER, "localizer (scout) image, not an axial slice")
    if image_type and image_type[0] == "DERIVED" and not config.keep_derived:
        raise RejectedFile(
            RejectReason.NOT_ORIGINAL,
            f"derived image (ImageType {'/'.join(image_type)}): only original acquisitions "
            "are used; set keep_derived to include reformats",
        )
    sop_uid = read_text(ds, "SOPInstanceUID")
    if not sop_uid:
        raise RejectedFile(RejectReason.MISSING_TAG, "no SOPInstanceUID: the image has no identity")
    orientation = _floats(ds, "ImageOrientationPatient")
    if not orientation:
        raise RejectedFile(
            RejectReason.MISSING_TAG,
            "no ImageOrientationPatient: cannot tell whether the slice is axial",
        )
    normal = check_axial(orientation, config.max_axial_angle_deg)
    slope = _float(ds, "RescaleSlope")
    intercept = _float(ds, "RescaleIntercept")
    has_lut = "ModalityLUTSequence" in ds
    if (slope is None or intercept is None) and not has_lut:
        raise RejectedFile(
            RejectReason.NO_RESCALE,
            "no RescaleSlope/RescaleIntercept: pixel values are not Hounsfield units",
        )
    rescale_type = read_text(ds, "RescaleType")
    if rescale_type and rescale_type.upper() not in ("HU", "HOUNSFIELD UNITS"):
        raise RejectedFile(
            RejectReason.NO_RESCALE,
            f"RescaleType {rescale_type}: pixel values are not Hounsfield units",
        )
    rows, columns = read_us(ds, "Rows"), read_us(ds, "Columns")
    if not rows or not columns:
        raise RejectedFile(RejectReason.NO_PIXEL_DATA, "no Rows/Columns: the file holds no image")
    z = None
    position = _floats(ds, "ImagePositionPatient")
    if position and len(position) == 3:
        z = float(np.dot(np.array(position), normal))
    spacing = _floats(ds, "PixelSpacing")
    pixel_spacing = (spacing[0], spacing[1]) if spacing and len(spacing) == 2 else None
    return SliceHeader(
        patient_id=read_text(ds, "PatientID"),
        study_instance_uid=read_text(ds, "StudyInstanceUID"),
        series_instance_uid=read_text(ds, "SeriesInstanceUID"),
        sop_instance_uid=sop_uid,
        instance_number=_int(ds, "InstanceNumber"),
        z=z,
        phase=detect_phase(ds).value,
        slice_thickness=_float(ds, "SliceThickness"),
        pixel_spacing=pixel_spacing,
        manufacturer=read_text(ds, "Manufacturer"),
        transfer_syntax=str(UID(ds.file_meta.TransferSyntaxUID)),
        study_date=read_text(ds, "StudyDate"),
        series_description=read_text(ds, "SeriesDescription"),
        kvp=_float(ds, "KVP"),
        photometric_interpretation=read_text(ds, "PhotometricInterpretation"),
        rows=rows,
        columns=columns,
        rescale_slope=slope,
        rescale_intercept=intercept,
        window_center_file=_float(ds, "WindowCenter"),
        window_width_file=_float(ds, "WindowWidth"),
        body_part_examined=read_text(ds, "BodyPartExamined"),
        image_type="\\".join(image_type),
        frame_of_reference_uid=read_text(ds, "FrameOfReferenceUID"),
        acquisition_number=_int(ds, "AcquisitionNumber"),
    )
