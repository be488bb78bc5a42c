"""Decoder bombs never reach the decoder: decide from what a file declares before paying.

A DICOM file says how large its image is (Rows x Columns x SamplesPerPixel x
NumberOfFrames x BitsAllocated), and a compressed codestream says it again in its own
header (JPEG 2000's SIZ marker, JPEG's and JPEG-LS's SOF marker, RLE's segment table).
A deflated dataset says nothing until it is inflated. Each check here reads only those
declarations (a few bytes) and refuses a file whose declarations exceed the limits or
disagree with each other, with a reason a radiographer understands, before pydicom or a
codec allocates anything. What passes can be decoded within a known memory bound.
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from dataclasses import dataclass
from typing import IO, BinaryIO, cast

from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from renalflow.tasks.dicom import RejectedFile, RejectReason, read_us


@dataclass(frozen=True)
class DecodeLimits:
    """What one file may make a worker decode (our choices, far above any CT slice).

    Attributes:
        max_side: largest Rows or Columns (CT slices are 512, sometimes 768 or 1024).
        max_frame_bytes: largest decoded frame (default 64 MiB: 4096 x 4096 x 4 bytes).
        max_inflated_bytes: largest dataset a deflated file may inflate to (default
            128 MiB; a 512 x 512 slice is about 0.5 MiB).
    """

    max_side: int = 4096
    max_frame_bytes: int = 64 * 2**20
    max_inflated_bytes: int = 128 * 2**20

    def __post_init__(self) -> None:
        if min(self.max_side, self.max_frame_bytes, self.max_inflated_bytes) < 1:
            raise ValueError("decode limits must be positive")


DEFAULT_LIMITS = DecodeLimits()

_CHUNK = 1 << 20


def check_deflated(fp: IO[bytes] | str, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    """Refuse a Deflated Explicit VR Little Endian file that inflates past the limit.

    pydicom inflates the whole dataset in one call; this inflates it first in chunks
    with a bounded output, so a few kilobytes that would inflate to gigabytes are
    refused after `max_inflated_bytes`, not after the worker ran out of memory. Files in
    any other transfer syntax return at once (only the file meta is read).
    """
    if isinstance(fp, str | os.PathLike):
        with open(fp, "rb") as handle:
            check_deflated(handle, limits)
        return
    start = fp.tell()
    try:
        try:
            read_preamble(cast(BinaryIO, fp), force=True)
            meta = _read_file_meta_info(cast(BinaryIO, fp))
        except (EOFError, ValueError, OSError, KeyError, TypeError, struct.error):
            return  # not a Part 10 file: the reader says what it is
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return
        _inflate_bounded(fp, limits.max_inflated_bytes)
    finally:
        fp.seek(start)


def _inflate_bounded(fp: IO[bytes], limit: int) -> None:
    """Inflate the rest of `fp` chunk by chunk, never holding more than a chunk, and
    refuse once the output passes `limit`."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    while not inflater.eof:
        data = fp.read(_CHUNK)
        pending = data
        while True:
            try:
                out = inflater.decompress(pending, _CHUNK)
            except zlib.error as err:
                raise RejectedFile(
                    RejectReason.DECODE_ERROR, f"deflated dataset is corrupt: {err}"
                ) from err
            total += len(out)
            if total > limit:
                raise RejectedFile(
                    RejectReason.TOO_LARGE,
                    f"deflated dataset inflates to more than {limit // 2**20} MiB (a CT "
                    "slice is about 1 MiB): refused before decoding (a deflate bomb, or "
                    "not a single slice)",
                )
            pending = inflater.unconsumed_tail
            if inflater.eof or (not pending and len(out) < _CHUNK):
                break
        if not data:
            return


def check_declared_size(ds: Dataset, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    """Refuse an image whose header declares more than the limits allow."""
    rows, columns = read_us(ds, "Rows") or 0, read_us(ds, "Columns") or 0
    samples = read_us(ds, "SamplesPerPixel") or 1
    allocated = read_us(ds, "BitsAllocated") or 16
    if max(rows, columns) > limits.max_side:
        raise RejectedFile(
            RejectReason.TOO_LARGE,
            f"image declares {rows} x {columns} pixels, more than {limits.max_side} on a side "
            "(CT slices are 512 or 1024): refused before decoding",
        )
    frame = rows * columns * samples * max(allocated, 8) // 8
    if frame > limits.max_frame_bytes:
        raise RejectedFile(
            RejectReason.TOO_LARGE,
            f"one frame would decode to {frame / 2**20:.0f} MiB, more than "
            f"{limits.max_frame_bytes // 2**20} MiB: refused before decoding",
        )


def check_codestream(ds: Dataset, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    """Compare an encapsulated frame's own header with the DICOM header.

    JPEG 2000 (SIZ), JPEG and JPEG-LS (SOF) declare the image size again; RLE declares
    its segments. A codestream larger than its DICOM header, or an RLE frame whose
    segments lie outside it, is refused before the codec allocates.
    """
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if not syntax.is_encapsulated or "PixelData" not in ds:
        return
    data = ds.PixelData
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        fragment = next(generate_frames(data, number_of_frames=frames), b"")
    except (ValueError, TypeError, StopIteration) as err:
        raise RejectedFile(
            RejectReason.DECODE_ERROR, f"encapsulated pixel data is malformed: {err}"
        ) from err
    rows, columns = read_us(ds, "Rows") or 0, read_us(ds, "Columns") or 0
    declared: tuple[int, int] | None = None
    if syntax in JPEG2000TransferSyntaxes:
        declared = _j2k_size(fragment)
        what = "JPEG 2000 codestream (SIZ marker)"
    elif syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        declared = _jpeg_size(fragment)
        what = "JPEG codestream (SOF marker)"
    elif syntax == RLELossless:
        _check_rle(fragment, ds)
        return
    else:
        return
    if declared is None:
        raise RejectedFile(
            RejectReason.DECODE_ERROR, f"{what} header not found or cut short in the first frame"
        )
    height, width = declared
    if max(height, width) > limits.max_side or (height, width) != (rows, columns):
        larger = height * width > rows * columns
        raise RejectedFile(
            RejectReason.TOO_LARGE if larger else RejectReason.DECODE_ERROR,
            f"{what} declares {height} x {width} pixels but the DICOM header says "
            f"{rows} x {columns}: refused before decoding",
        )


def _j2k_size(stream: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG 2000 codestream's SIZ marker (or a JP2 file's)."""
    at = stream.find(b"\xff\x4f\xff\x51")  # SOC then SIZ (a JP2 box wrapper comes first)
    if at < 0 or len(stream) < at + 4 + 2 + 2 + 16:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", stream[at + 8 : at + 24])
    return ysiz - yosiz, xsiz - xosiz


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def _jpeg_size(stream: bytes) -> tuple[int, int] | None:
    """(height, width) from the first SOF marker of a JPEG or JPEG-LS stream."""
    if not stream.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(stream):
        if stream[at] != 0xFF:
            return None
        marker = stream[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        (length,) = struct.unpack(">H", stream[at + 2 : at + 4])
        if marker in _SOF:
            if at + 9 > len(stream):
                return None
            height, width = struct.unpack(">HH", stream[at + 5 : at + 9])
            return height, width
        at += 2 + length
    return None


def _check_rle(frame: bytes, ds: Dataset) -> None:
    """An RLE frame's 64-byte header: segment count and offsets inside the frame."""
    if len(frame) < 64:
        raise RejectedFile(
            RejectReason.TRUNCATED, f"RLE frame of {len(frame)} bytes has no complete header"
        )
    header = struct.unpack("<16I", frame[:64])
    count, offsets = header[0], header[1:]
    samples = read_us(ds, "SamplesPerPixel") or 1
    expected = samples * (max(read_us(ds, "BitsAllocated") or 16, 8) // 8)
    if count != expected:
        raise RejectedFile(
            RejectReason.DECODE_ERROR,
            f"RLE frame has {count} segments, the header's image needs {expected}",
        )
    used = offsets[:count]
    if used[0] != 64 or any(b <= a for a, b in itertools.pairwise(used)):
        raise RejectedFile(RejectReason.DECODE_ERROR, "RLE segment offsets are out of order")
    if used[-1] >= len(frame):
        raise RejectedFile(
            RejectReason.TRUNCATED,
            f"RLE frame ends early (truncated file): segment {count} starts at byte "
            f"{used[-1]} of a {len(frame)}-byte frame",
        )
