"""Pixel maths: Hounsfield units, display windows and resizing.

The window follows the DICOM linear VOI LUT function (PS3.3 C.11.2.1.2.1), so a
level/width here means what it means on a radiologist's workstation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from renalflow.tasks.config import Interpolation

_PIL_FILTERS = {
    Interpolation.NEAREST: Image.Resampling.NEAREST,
    Interpolation.BILINEAR: Image.Resampling.BILINEAR,
    Interpolation.BICUBIC: Image.Resampling.BICUBIC,
    Interpolation.LANCZOS: Image.Resampling.LANCZOS,
    Interpolation.BOX: Image.Resampling.BOX,
}


def window_hu(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map Hounsfield units to uint8 through the DICOM linear window (level `center`).

    Values at or below `center - 0.5 - (width - 1) / 2` become 0, values above
    `center - 0.5 + (width - 1) / 2` become 255, and values between are linear.
    """
    if width < 1:
        raise ValueError(f"window width must be at least 1, got {width}")
    x = np.asarray(hu, dtype=np.float64)
    if width == 1:
        return np.where(x <= center - 0.5, 0, 255).astype(np.uint8)
    scaled = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@lru_cache(maxsize=64)
def stored_value_lut(
    slope: float,
    intercept: float,
    center: float,
    width: float,
    signed: bool,
    padding_value: int | None = None,
) -> np.ndarray:
    """A 65,536-entry table from a 16-bit stored value straight to the windowed uint8.

    Index the table with the stored pixels viewed as uint16 (`arr.view(np.uint16)`);
    for signed data the index is the two's-complement bit pattern. Folding the modality
    rescale and the window into one lookup costs one gather per pixel instead of several
    float passes. A PixelPaddingValue (outside the scanned field of view) maps to 0.
    """
    raw = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    stored = raw.view(np.int16).astype(np.float64) if signed else raw.astype(np.float64)
    lut = window_hu(stored * slope + intercept, center, width)
    if padding_value is not None:
        lut[np.uint16(np.int64(padding_value) & 0xFFFF)] = 0
    lut.setflags(write=False)
    return lut


def apply_lut(stored: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Apply a `stored_value_lut` to 8- or 16-bit stored pixels (any byte order)."""
    if not stored.dtype.isnative:
        stored = stored.astype(stored.dtype.newbyteorder("="))
    if stored.dtype.itemsize == 1:
        index = stored.astype(np.uint16) if stored.dtype == np.uint8 else stored.astype(np.int16)
        return lut[index.view(np.uint16)]
    if stored.dtype.itemsize != 2:
        raise ValueError(f"stored pixels must be 8 or 16 bit, got {stored.dtype}")
    return lut[stored.view(np.uint16)]


@lru_cache(maxsize=32)
def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """The source index Pillow's nearest filter picks for each output pixel.

    Taken from Pillow itself (resizing an image of indices in 32-bit mode), so a
    16-bit slice resized here picks exactly the pixels Pillow picks for 8-bit images.
    """
    ramp = Image.fromarray(np.arange(n_in, dtype=np.int32).reshape(1, n_in))
    picked = np.asarray(ramp.resize((n_out, 1), resample=Image.Resampling.NEAREST))
    index = picked.reshape(n_out).astype(np.intp)
    index.setflags(write=False)
    return index


def resize_slice(image: np.ndarray, size: int, interpolation: Interpolation) -> np.ndarray:
    """Resize a 2-D image to `size` x `size` with Pillow, without cropping (as Keras did).

    uint8 images use any filter. Other dtypes (stored values, before the window) may
    only use nearest: it picks pixels without arithmetic, so windowing after a nearest
    resize gives exactly what windowing before it would, at a fifth of the cost.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D slice, got shape {image.shape}")
    if image.shape == (size, size):
        return image
    interpolation = Interpolation(interpolation)
    if image.dtype == np.uint8:
        pil = Image.fromarray(image)
        out = pil.resize((size, size), resample=_PIL_FILTERS[interpolation])
        return np.asarray(out, dtype=np.uint8)
    if interpolation is Interpolation.NEAREST:
        rows = _nearest_index(image.shape[0], size)
        cols = _nearest_index(image.shape[1], size)
        return image.take(rows, axis=0).take(cols, axis=1)
    raise ValueError(
        f"cannot resize {image.dtype} pixels with {interpolation.value}: window them to "
        "uint8 first (only nearest may resize stored values)"
    )
