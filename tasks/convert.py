"""Turn one DICOM file into the windowed, resized uint8 slice the network sees."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import IO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from renalflow.tasks.annotations import AnnotationFound, seg_lesions
from renalflow.tasks.config import Interpolation, PreprocessConfig, WindowSource
from renalflow.tasks.dicom import (
    NON_IMAGE_MODALITIES,
    RejectedFile,
    RejectReason,
    SliceHeader,
    non_image_kind,
    read_dataset,
    read_header,
    read_text,
    read_us,
)
from renalflow.tasks.guards import check_codestream, check_declared_size, check_deflated
from renalflow.tasks.image import apply_lut, resize_slice, stored_value_lut, window_hu


@dataclass(frozen=True)
class ConvertedSlice:
    """A slice ready for the store: header fields, the window used and uint8 pixels."""

    header: SliceHeader
    window_center: float
    window_width: float
    pixels: np.ndarray  # uint8, (output_size, output_size)


def decode_pixels(ds: Dataset) -> np.ndarray:
    """Decode the stored pixel values of a single-frame greyscale image.

    Compressed transfer syntaxes go through pydicom's plugins (pylibjpeg, pyjpegls).
    Raises `RejectedFile` with the decoder's own message when decoding fails.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise RejectedFile(RejectReason.NO_PIXEL_DATA, "no pixel data in the file")
    photometric = read_text(ds, "PhotometricInterpretation").upper()
    samples = read_us(ds, "SamplesPerPixel") or 1
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise RejectedFile(
            RejectReason.UNSUPPORTED_PIXELS,
            f"colour image ({photometric or 'unknown photometric'}, {samples} samples per "
            "pixel): CT slices are greyscale, this looks like a screen capture",
        )
    # What the header and the codestream declare decides, before anything is decoded.
    check_declared_size(ds)
    check_codestream(ds)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax in _NATIVE_LITTLE_ENDIAN:
        native = _native_pixels(ds)
        if native is not None:
            return native
    try:
        arr = ds.pixel_array
    except DECODER_ERRORS as err:  # the file's codestream, not the run, fails
        text = str(err) or type(err).__name__
        lowered = text.lower()
        if "length of the pixel data" in lowered or "end of" in lowered or "truncat" in lowered:
            raise RejectedFile(
                RejectReason.TRUNCATED,
                f"{syntax.name} pixel data ends early (truncated file): {text}",
            ) from err
        raise RejectedFile(
            RejectReason.DECODE_ERROR, f"{syntax.name} decoder failed: {text}"
        ) from err
    if arr.ndim != 2:
        raise RejectedFile(
            RejectReason.MULTIFRAME, f"pixel data has shape {arr.shape}, expected one 2-D frame"
        )
    return arr


DECODER_ERRORS: tuple[type[Exception], ...] = (
    ValueError,  # pydicom: pixel data of the wrong length or a bad header value
    RuntimeError,  # pylibjpeg, openjpeg, libjpeg, RLE: the codestream does not decode
    NotImplementedError,  # pydicom: no decoder takes this syntax or bit depth
    EOFError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
)
"""What decoding a file's pixel data can raise because of the file; MemoryError,
RecursionError and the rest are bugs or resource failures and fail the task loudly."""

_NATIVE_LITTLE_ENDIAN = {
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
}


def _native_pixels(ds: Dataset) -> np.ndarray | None:
    """Fast path for uncompressed little-endian 8/16-bit greyscale: view the bytes.

    Gives what `pixel_array` gives (bits above BitsStored are dropped, signed values
    sign-extended) at a fraction of the cost; returns None for anything else.
    """
    rows, columns = read_us(ds, "Rows"), read_us(ds, "Columns")
    allocated, stored = read_us(ds, "BitsAllocated"), read_us(ds, "BitsStored")
    signed = read_us(ds, "PixelRepresentation") == 1
    if not rows or not columns or allocated not in (8, 16) or not stored or stored > allocated:
        return None
    elem = ds.get_item(0x7FE00010)
    data = elem.value if elem is not None else None
    if not isinstance(data, bytes | bytearray):
        return None
    count = rows * columns
    expected = count * (allocated // 8)
    if len(data) < expected:
        raise RejectedFile(
            RejectReason.TRUNCATED,
            f"pixel data ends early (truncated file): {len(data)} of {expected} bytes",
        )
    kind = ("<i" if signed else "<u") + str(allocated // 8)
    arr = np.frombuffer(data, dtype=kind, count=count).reshape(rows, columns)
    if stored < allocated:
        if signed:
            shift = allocated - stored
            arr = (arr << shift) >> shift
        else:
            arr = arr & np.array((1 << stored) - 1, dtype=arr.dtype)
    return arr


def choose_window(header: SliceHeader, config: PreprocessConfig) -> tuple[float, float]:
    """The window (center, width) to apply: the configured one or the file's own."""
    if (
        config.window_source is WindowSource.FILE
        and header.window_center_file is not None
        and header.window_width_file is not None
        and header.window_width_file >= 1
    ):
        return header.window_center_file, header.window_width_file
    return config.window_center, config.window_width


def preprocess_pixels(
    ds: Dataset, arr: np.ndarray, header: SliceHeader, config: PreprocessConfig
) -> tuple[np.ndarray, float, float]:
    """Stored values -> HU (modality LUT) -> window -> uint8 -> resize.

    The image always shows dense tissue bright: HU are HU whatever the
    PhotometricInterpretation, and MONOCHROME1 only tells a viewer to invert the display.
    """
    center, width = choose_window(header, config)
    size = config.output_size
    linear = (
        header.rescale_slope is not None
        and header.rescale_intercept is not None
        and "ModalityLUTSequence" not in ds
        and arr.dtype.kind in "iu"
        and arr.dtype.itemsize <= 2
    )
    if linear:
        assert header.rescale_slope is not None and header.rescale_intercept is not None
        padding = read_us(ds, "PixelPaddingValue")
        signed = arr.dtype.kind == "i"
        if padding is not None and signed and padding >= 0x8000:
            padding -= 0x10000  # SS value read as unsigned
        lut = stored_value_lut(
            header.rescale_slope, header.rescale_intercept, center, width, signed, padding
        )
        if config.interpolation is Interpolation.NEAREST:
            return apply_lut(resize_slice(arr, size, config.interpolation), lut), center, width
        return resize_slice(apply_lut(arr, lut), size, config.interpolation), center, width
    hu = apply_modality_lut(arr, ds)
    return resize_slice(window_hu(hu, center, width), size, config.interpolation), center, width


def convert_file(
    fp: IO[bytes] | str, config: PreprocessConfig, source_uri: str = ""
) -> ConvertedSlice:
    """Read, check, decode and preprocess one file; raises `RejectedFile` if unusable,
    `NON_IMAGE` for objects that are not images, and `AnnotationFound` (with the lesion
    rows) for a DICOM SEG that marks a renal lesion."""
    check_deflated(fp)
    ds = read_dataset(fp, with_pixels=True)
    kind = non_image_kind(ds)
    if kind is not None:
        if kind == NON_IMAGE_MODALITIES["SEG"]:
            check_declared_size(ds)  # the frames are decoded to find the lesion slices
            rows, described = seg_lesions(ds, source_uri)
            raise AnnotationFound(described, rows)
        raise RejectedFile(RejectReason.NON_IMAGE, f"{kind}, not an image")
    header = read_header(ds, config)
    arr = decode_pixels(ds)
    pixels, center, width = preprocess_pixels(ds, arr, header, config)
    return ConvertedSlice(header=header, window_center=center, window_width=width, pixels=pixels)
