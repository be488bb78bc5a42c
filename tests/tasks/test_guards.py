"""Decoder bombs are refused from what the file declares, before anything is decoded.

Crafted from real encoders' output (pydicom's test files and files compressed by the
same plugins renalflow decodes with), then made to lie; peak memory is measured in a
separate process, not assumed.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.convert import convert_file, decode_pixels
from renalflow.tasks.dicom import RejectedFile, RejectReason
from renalflow.tasks.guards import DecodeLimits, check_deflated
from tests.factory import make_ct, save

CONFIG = PreprocessConfig(output_size=32)


def _ct(tmp_path: Path, syntax, name: str = "ct.dcm", size: int = 64) -> Path:
    stored = (np.arange(size * size).reshape(size, size) % 2000).astype(np.uint16)
    return save(make_ct(stored), tmp_path / name, syntax)


def _rewrite_first_frame(path: Path, change) -> Path:
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([change(bytearray(frame))])
    ds.save_as(path, enforce_file_format=True)
    return path


def _lying_siz(frame: bytearray, height: int = 60000, width: int = 60000) -> bytes:
    at = frame.find(b"\xff\x4f\xff\x51")
    frame[at + 8 : at + 16] = struct.pack(">II", width, height)  # Xsiz, Ysiz
    return bytes(frame)


def test_jpeg2000_whose_siz_marker_lies_is_refused_before_decoding(tmp_path):
    path = _rewrite_first_frame(_ct(tmp_path, JPEG2000Lossless), _lying_siz)
    with pytest.raises(RejectedFile, match=r"SIZ marker.*60000 x 60000.*64 x 64") as info:
        convert_file(str(path), CONFIG)
    assert info.value.code is RejectReason.TOO_LARGE


def test_a_real_jpeg2000_file_with_a_lying_siz_is_refused(tmp_path):
    source = Path(get_testdata_file("MR_small_jp2klossless.dcm"))
    path = tmp_path / "mr.dcm"
    path.write_bytes(source.read_bytes())
    _rewrite_first_frame(path, _lying_siz)
    with pytest.raises(RejectedFile, match="declares 60000 x 60000 pixels"):
        decode_pixels(pydicom.dcmread(path))


def test_jpegls_whose_sof_disagrees_with_the_header_is_refused(tmp_path):
    def lying_sof(frame: bytearray) -> bytes:
        at = frame.find(b"\xff\xf7")  # JPEG-LS SOF55
        frame[at + 5 : at + 9] = struct.pack(">HH", 40000, 40000)
        return bytes(frame)

    path = _rewrite_first_frame(_ct(tmp_path, JPEGLSLossless), lying_sof)
    with pytest.raises(RejectedFile, match=r"SOF marker.*40000 x 40000"):
        convert_file(str(path), CONFIG)


def test_truncated_rle_frame_is_a_truncated_file(tmp_path):
    path = _rewrite_first_frame(_ct(tmp_path, RLELossless), lambda f: bytes(f[:80]))
    with pytest.raises(RejectedFile, match="RLE frame ends early") as info:
        convert_file(str(path), CONFIG)
    assert info.value.code is RejectReason.TRUNCATED


def test_header_declaring_a_huge_image_is_refused_before_decoding(tmp_path):
    path = _ct(tmp_path, JPEG2000Lossless)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 30000
    with pytest.raises(RejectedFile, match="30000 x 30000 pixels, more than 4096"):
        decode_pixels(ds)


def _deflate_bomb(path: Path, side: int) -> Path:
    """A deflated CT file whose dataset inflates to side x side 16-bit pixels, written
    in streaming chunks (never the whole dataset in memory)."""
    template = make_ct(np.zeros((4, 4), np.uint16))
    template.Rows = template.Columns = side
    del template.PixelData
    small = save(template, path.with_suffix(".tmp"), DeflatedExplicitVRLittleEndian)
    head = pydicom.dcmread(small)
    raw = small.read_bytes()
    with open(small, "rb") as handle:
        read_preamble(handle, force=False)
        _read_file_meta_info(handle)
        meta_end = handle.tell()
    dataset = zlib.decompress(raw[meta_end:], -zlib.MAX_WBITS)
    assert head.Rows == side
    n_bytes = side * side * 2
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n_bytes)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as out:
        out.write(raw[:meta_end])
        out.write(packer.compress(dataset + pixel_header))
        zeros = bytes(1 << 24)
        for _ in range(n_bytes // len(zeros)):
            out.write(packer.compress(zeros))
        out.write(packer.flush())
    small.unlink()
    return path


@pytest.fixture(scope="module")
def deflate_bomb(tmp_path_factory) -> Path:
    return _deflate_bomb(tmp_path_factory.mktemp("bomb") / "bomb.dcm", 16384)


def test_deflate_bomb_is_refused_after_a_bounded_inflate(deflate_bomb):
    assert deflate_bomb.stat().st_size < 2 * 2**20  # 512 MiB of pixels in under 2 MB
    with pytest.raises(RejectedFile, match="inflates to more than 128 MiB") as info:
        convert_file(str(deflate_bomb), CONFIG)
    assert info.value.code is RejectReason.TOO_LARGE
    with pytest.raises(RejectedFile, match="more than 1 MiB"):
        check_deflated(str(deflate_bomb), DecodeLimits(max_inflated_bytes=2**20))


def test_a_good_deflated_file_passes_the_guard(tmp_path):
    path = _ct(tmp_path, DeflatedExplicitVRLittleEndian)
    check_deflated(str(path))
    assert convert_file(str(path), CONFIG).pixels.shape == (32, 32)


PEAK = """
import json, resource, sys
from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.convert import convert_file
from renalflow.tasks.dicom import RejectedFile
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    convert_file(sys.argv[1], PreprocessConfig(output_size=32))
    outcome = "slice"
except RejectedFile as err:
    outcome = err.code.value
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "grew_mib": (after - before) / 1024}))
"""


def test_bombs_leave_peak_memory_where_it_was(deflate_bomb, tmp_path):
    j2k = _rewrite_first_frame(_ct(tmp_path, JPEG2000Lossless), _lying_siz)
    for path in (deflate_bomb, j2k):
        run = subprocess.run(
            [sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, check=True
        )
        measured = json.loads(run.stdout.strip().splitlines()[-1])
        assert measured["outcome"] == "too_large", measured
        # The whole conversion may grow the process by a few chunks, never by the bomb.
        assert measured["grew_mib"] < 48, measured
