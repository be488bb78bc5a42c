"""Hostile uploads, crafted: a zip bomb (1 GiB of zeros), zips whose size fields,
entry counts or flags lie, corrupt zips, paths and links out of the folder, too many
files, too many bytes, forms cut short. Each is refused having written at most what
the limits allow, and the bytes written are counted, not assumed."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from renalflow.tasks.upload import (
    MAX_FILES,
    Budget,
    FormReceiver,
    UnsafeUpload,
    UploadLimits,
    UploadTooLarge,
    extract_zip,
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


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A zip of one member, 1 GiB of zeros deflated to about 1 MB (ratio over 1,000)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("slice.dcm", "w") as member:
            zeros = bytes(64 * MB)
            for _ in range(16):
                member.write(zeros)
    return buffer.getvalue()


def _lie(zipped: bytes, *, file_size: int | None = None, compress_size: int | None = None) -> bytes:
    """The zip with its first member's size fields rewritten, in the local header and in
    the central directory alike (the data left as they are)."""
    forged = bytearray(zipped)
    central = forged.rfind(b"PK\x01\x02")
    for value, local, in_directory in ((compress_size, 18, 20), (file_size, 22, 24)):
        if value is not None:
            struct.pack_into("<I", forged, local, value)
            struct.pack_into("<I", forged, central + in_directory, value)
    return bytes(forged)


def _extract(zipped: bytes, tmp_path: Path, limits: UploadLimits) -> Budget:
    """Extract through a budget the test can read afterwards; the refusal is re-raised
    with the budget attached."""
    path = tmp_path / "00000-series.zip"
    path.write_bytes(zipped)
    budget = Budget(limits)
    try:
        extract_zip(path, tmp_path, budget)
    except Exception as err:
        err.budget = budget  # type: ignore[attr-defined]
        raise
    return budget


def test_a_zip_bomb_is_refused_by_what_it_declares_before_inflating(bomb, tmp_path):
    assert len(bomb) < 2 * MB
    with pytest.raises(UnsafeUpload, match="times: refused as a compression bomb") as refused:
        _extract(bomb, tmp_path, UploadLimits(max_bytes=500 * MB))
    assert refused.value.budget.written == 0  # not a byte inflated
    assert _written(tmp_path) == len(bomb)  # the zip alone


@pytest.mark.parametrize(
    "lie",
    [
        {"file_size": 10 * MB},  # declares a plausible 10 MB: ratio 10
        {"file_size": 15 * MB, "compress_size": 10 * MB},  # both fields forged
    ],
)
def test_a_bomb_whose_size_fields_lie_is_stopped_by_counting(bomb, tmp_path, lie):
    """The header says a few MB; the data inflate to 1 GiB. What is written stops at
    what was declared, under the 20 MB limit, and the member is refused."""
    cap = 20 * MB
    with pytest.raises((UnsafeUpload, UploadTooLarge)) as refused:
        _extract(_lie(bomb, **lie), tmp_path, UploadLimits(max_bytes=cap, max_ratio=100))
    assert "damaged or forged" in str(refused.value) or "size fields lie" in str(refused.value)
    written = refused.value.budget.written
    assert written <= lie["file_size"] <= cap
    assert not (tmp_path / "00001-slice.dcm").exists()  # the partial member was removed


def test_a_zip_declaring_more_than_the_limit_is_refused_before_inflating(tmp_path):
    honest = _zip({"a.dcm": b"\x01" * (3 * MB), "b.dcm": b"\x02" * (3 * MB)}).getvalue()
    with pytest.raises(UploadTooLarge, match="declares 6 MB unzipped") as refused:
        _extract(honest, tmp_path, UploadLimits(max_bytes=5 * MB, max_ratio=10_000))
    assert refused.value.budget.written == 0


def test_a_zip_whose_end_record_declares_too_many_entries(tmp_path):
    forged = bytearray(_zip({f"{i}.dcm": b"x" for i in range(3)}).getvalue())
    end = forged.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", forged, end + 8, 60_000, 60_000)  # entries here, entries in all
    with pytest.raises(UploadTooLarge, match="declares 60000 entries"):
        _extract(bytes(forged), tmp_path, UploadLimits(MB))
    directory = bytearray(_zip({"a.dcm": b"x"}).getvalue())
    end = directory.rfind(b"PK\x05\x06")
    struct.pack_into("<L", directory, end + 12, 400 * MB)  # a 400 MB central directory
    with pytest.raises(UploadTooLarge, match="byte directory"):
        _extract(bytes(directory), tmp_path, UploadLimits(MB))


def test_a_zip_with_more_members_than_files_allowed(tmp_path):
    members = {f"{i}.dcm": b"x" for i in range(11)}
    with pytest.raises(UploadTooLarge, match=r"declares 11 entries .* more than the 10 files"):
        take_upload([("s.zip", _zip(members))], tmp_path, UploadLimits(MB, max_files=10))
    assert _written(tmp_path) == 0


def test_a_corrupt_zip_is_a_clear_refusal(tmp_path):
    broken = bytearray(_zip({"a.dcm": b"slice" * 10_000}).getvalue())
    broken[40:60] = b"\x00" * 20  # damage the compressed data
    with pytest.raises(UnsafeUpload, match=r"'a.dcm' cannot be read \(.*\): a damaged or forged"):
        take_upload([("series.zip", io.BytesIO(bytes(broken)))], tmp_path, UploadLimits(MB))
    truncated = _zip({"a.dcm": b"slice" * 10_000}).getvalue()[:100]
    with pytest.raises(UnsafeUpload, match=r"cut\.zip is not a readable zip"):
        take_upload([("cut.zip", io.BytesIO(truncated))], tmp_path, UploadLimits(MB))
    assert _written(tmp_path) == 0


def test_an_encrypted_member_is_refused(tmp_path):
    forged = bytearray(_zip({"a.dcm": b"slice"}).getvalue())
    central = forged.rfind(b"PK\x01\x02")
    struct.pack_into("<H", forged, central + 8, 0x1)  # general purpose flag: encrypted
    with pytest.raises(UnsafeUpload, match="is encrypted"):
        _extract(bytes(forged), tmp_path, UploadLimits(MB))


@pytest.mark.parametrize("name", ["../../etc/cron.d/x", "/etc/passwd", "C:/Windows/x.dcm"])
def test_zip_paths_out_of_the_folder_are_refused(tmp_path, name):
    with pytest.raises(UnsafeUpload, match="points outside the upload"):
        take_upload([("s.zip", _zip({"ok.dcm": b"y", name: b"x"}))], tmp_path, UploadLimits(MB))
    assert _written(tmp_path) == 0  # refused before the first member is written


def test_a_zip_link_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("slice.dcm")
        link.external_attr = 0o120777 << 16  # a symbolic link
        archive.writestr(link, "/etc/shadow")
    buffer.seek(0)
    with pytest.raises(UnsafeUpload, match="is a link"):
        take_upload([("s.zip", buffer)], tmp_path, UploadLimits(MB))


def test_more_bytes_than_allowed_stop_at_the_limit(tmp_path):
    with pytest.raises(UploadTooLarge, match="larger than 1 MB"):
        take_upload([("big.dcm", io.BytesIO(bytes(3 * MB)))], tmp_path, UploadLimits(MB))
    assert _written(tmp_path) <= MB


def test_a_series_in_a_zip_lands_flat_in_the_folder(tmp_path):
    members = {"study/series/1.dcm": b"a", "study/series/2.dcm": b"b"}
    saved = take_upload([("s.zip", _zip(members))], tmp_path, UploadLimits(MB))
    assert [p.name for p in saved] == ["00001-1.dcm", "00002-2.dcm"]
    assert [p.read_bytes() for p in saved] == [b"a", b"b"]
    assert all(p.parent == tmp_path for p in saved) and not list(tmp_path.glob("*.zip"))


# A form as a browser sends it, received a few bytes at a time.


def _form(files: list[tuple[str, bytes]], boundary: str = "XyZ") -> bytes:
    body = b""
    for name, data in files:
        body += (
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="files"; filename="{name}"\r\n'
                "Content-Type: application/dicom\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode()


def _receive(body: bytes, folder: Path, limits: UploadLimits, step: int = 7) -> FormReceiver:
    receiver = FormReceiver("multipart/form-data; boundary=XyZ", folder, limits)
    try:
        for start in range(0, len(body), step):
            receiver.feed(body[start : start + step])
    finally:
        receiver.close()
    return receiver


def test_a_form_is_written_as_it_arrives(tmp_path):
    series = [("1.dcm", bytes(range(256)) * 40), ("../../etc/2.dcm", b"\r\n--XyQ\r\n--Xy\r\n-" * 3)]
    zipped = _zip({"inner/3.dcm": b"three"}).getvalue()
    receiver = _receive(_form([*series, ("s.zip", zipped)]), tmp_path, UploadLimits(MB))
    saved = receiver.finish()
    assert [p.name for p in saved] == ["00000-1.dcm", "00001-2.dcm", "00003-3.dcm"]
    assert [p.read_bytes() for p in saved] == [series[0][1], series[1][1], b"three"]
    assert {p.parent for p in saved} == {tmp_path}


def test_a_form_over_the_limit_is_refused_while_it_arrives(tmp_path):
    body = _form([("big.dcm", bytes(5 * MB))])
    receiver = FormReceiver("multipart/form-data; boundary=XyZ", tmp_path, UploadLimits(MB))
    fed = 0
    with pytest.raises(UploadTooLarge, match="larger than 1 MB"):
        for start in range(0, len(body), 64 * 1024):  # uvicorn's chunks
            fed += len(body[start : start + 64 * 1024])
            receiver.feed(body[start : start + 64 * 1024])
    receiver.close()
    assert fed <= MB + 64 * 1024 + 1024  # refused in the chunk that passed the limit
    assert receiver.budget.written <= MB and _written(tmp_path) <= MB


def test_a_form_holds_at_most_the_promised_3000_files(tmp_path):
    assert MAX_FILES == 3000  # what the README promises
    limits = UploadLimits(MB)
    (tmp_path / "ok").mkdir()
    receiver = _receive(_form([(f"{i}.dcm", b"x") for i in range(3000)]),
                        tmp_path / "ok", limits, step=65536)  # fmt: skip
    assert len(receiver.finish()) == 3000
    (tmp_path / "over").mkdir()
    with pytest.raises(UploadTooLarge, match="more than 3000 files"):
        _receive(_form([(f"{i}.dcm", b"x") for i in range(3001)]), tmp_path / "over", limits, 65536)


def test_forms_that_are_not_forms(tmp_path):
    with pytest.raises(UnsafeUpload, match="not multipart/form-data"):
        FormReceiver("application/octet-stream", tmp_path, UploadLimits(MB))
    with pytest.raises(UnsafeUpload, match="ended before its last part"):
        _receive(_form([("a.dcm", b"abc")])[:-40], tmp_path, UploadLimits(MB)).finish()
    headers = b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="a"\r\n'
    with pytest.raises(UnsafeUpload, match="header"):
        _receive(headers + b"X-Padding: " + b"p" * 10_000 + b"\r\n\r\n", tmp_path, UploadLimits(MB))


def test_zlib_bomb_figures_are_what_the_fixture_claims(bomb):
    """The crafted bomb really is 1 GiB of zeros (checked against zlib's own count)."""
    with zipfile.ZipFile(io.BytesIO(bomb)) as archive:
        info = archive.infolist()[0]
        assert info.file_size == 1024 * MB and info.compress_size < 2 * MB
        assert info.CRC == zlib.crc32(bytes(1024 * MB))
