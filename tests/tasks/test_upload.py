"""Hostile uploads, crafted: a zip bomb, a zip whose size fields lie, a corrupt zip,
paths and links out of the folder, too many files, too many bytes. Each is refused
having written at most what the limits allow."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest

from renalflow.tasks.upload import (
    UnsafeUpload,
    UploadLimits,
    UploadTooLarge,
    take_upload,
)

MB = 2**20


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    buffer.seek(0)
    return buffer


def _written(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_zip_bomb_is_refused_by_what_it_inflates_to(tmp_path):
    bomb = _zip({"slice.dcm": bytes(1024 * MB)})  # 1 GiB of zeros in about 1 MB
    assert len(bomb.getvalue()) < 2 * MB
    with pytest.raises(UnsafeUpload, match="compression bomb"):
        take_upload([("series.zip", bomb)], tmp_path, UploadLimits(max_bytes=500 * MB))
    assert _written(tmp_path) == 0  # what was inflated was removed


def test_a_zip_whose_size_fields_lie_is_caught_by_counting(tmp_path):
    """Headers that declare 10 bytes for a member that inflates to 50 MB."""
    honest = _zip({"slice.dcm": b"\x01" * (50 * MB)}).getvalue()
    lying = bytearray(honest)
    # Local header: uncompressed size at offset 22; central directory entry: offset 24.
    struct.pack_into("<I", lying, 22, 10)
    central = lying.rfind(b"PK\x01\x02")
    struct.pack_into("<I", lying, central + 24, 10)
    limits = UploadLimits(max_bytes=20 * MB, max_ratio=10_000)
    with pytest.raises((UnsafeUpload, UploadTooLarge)):
        take_upload([("series.zip", io.BytesIO(bytes(lying)))], tmp_path, limits)
    assert _written(tmp_path) <= 20 * MB


def test_a_corrupt_zip_is_a_clear_refusal(tmp_path):
    broken = bytearray(_zip({"a.dcm": b"slice" * 10_000}).getvalue())
    broken[40:60] = b"\x00" * 20  # damage the compressed data
    with pytest.raises(UnsafeUpload, match=r"cannot be read|not a readable zip"):
        take_upload([("series.zip", io.BytesIO(bytes(broken)))], tmp_path, UploadLimits(MB))
    truncated = _zip({"a.dcm": b"slice" * 10_000}).getvalue()[:100]
    with pytest.raises(UnsafeUpload, match="not a readable zip"):
        take_upload([("cut.zip", io.BytesIO(truncated))], tmp_path, UploadLimits(MB))


@pytest.mark.parametrize("name", ["../../etc/cron.d/x", "/etc/passwd", "C:/Windows/x.dcm"])
def test_zip_paths_out_of_the_folder_are_refused(tmp_path, name):
    with pytest.raises(UnsafeUpload, match="points outside the upload"):
        take_upload([("s.zip", _zip({name: b"x"}))], tmp_path, UploadLimits(MB))


def test_a_zip_link_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("slice.dcm")
        link.external_attr = (0o120777 << 16) | 0  # a symbolic link
        archive.writestr(link, "/etc/shadow")
    buffer.seek(0)
    with pytest.raises(UnsafeUpload, match="is a link"):
        take_upload([("s.zip", buffer)], tmp_path, UploadLimits(MB))


def test_more_files_or_bytes_than_allowed(tmp_path):
    members = {f"{i}.dcm": b"x" for i in range(11)}
    with pytest.raises(UploadTooLarge, match="holds 11 files"):
        take_upload([("s.zip", _zip(members))], tmp_path, UploadLimits(MB, max_files=10))
    (tmp_path / "b").mkdir()
    with pytest.raises(UploadTooLarge, match="larger than 1 MB"):
        take_upload([("big.dcm", io.BytesIO(bytes(3 * MB)))], tmp_path / "b", UploadLimits(MB))
    assert _written(tmp_path / "b") == 0


def test_a_series_in_a_zip_lands_flat_in_the_folder(tmp_path):
    members = {"study/series/1.dcm": b"a", "study/series/2.dcm": b"b"}
    saved = take_upload([("s.zip", _zip(members))], tmp_path, UploadLimits(MB))
    assert [p.name for p in saved] == ["00000-1.dcm", "00001-2.dcm"]
    assert all(p.parent == tmp_path for p in saved) and not (tmp_path / "s.zip").exists()
