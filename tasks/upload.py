"""Uploads from the network, taken in with bounds.

A multipart/form-data body is parsed as it arrives and each file is written straight
into the upload's folder, the byte and file limits enforced on every chunk (nothing
is spooled elsewhere, nothing held in memory beyond the chunk at hand). Zips are
judged first by what they declare (entries, directory size, sizes and compression
ratio of every member, names, links, encryption) and then extracted counting the
bytes they really inflate, never trusting their size fields. Plain functions; the
web page calls them.
"""

from __future__ import annotations

import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from renalflow.tasks.errors import InputError

CHUNK = 1 << 20  # bytes read at a time: memory per upload stays at one chunk
MAX_FILES = 3000
"""Files one upload may hold, zip members included (a CT series is 50-600 slices)."""
MAX_RATIO = 100.0
"""Our choice: DICOM compresses 2-5 times (10-20 for slices mostly air); bombs 1,000."""
MAX_HEADER_BYTES = 8192  # a part's headers (name, type): a few hundred bytes in practice
DIRECTORY_BYTES_PER_FILE = 1024  # a zip's central directory entry: 46 bytes + name + extras


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may make the server do.

    Attributes:
        max_bytes: bytes received, and bytes written after unzipping, each (the page's
            --max-upload-mb).
        max_files: files in one upload, zip members included.
        max_ratio: a zip member that declares or inflates to more than this many times
            its compressed size is refused as a compression bomb.
    """

    max_bytes: int
    max_files: int = MAX_FILES
    max_ratio: float = MAX_RATIO


class UploadTooLarge(InputError):
    """More bytes or files than the limits allow (HTTP 413)."""


class UnsafeUpload(InputError):
    """An upload that cannot be taken as sent: not a form, a corrupt or encrypted zip, a
    path out of the folder, a compression bomb (HTTP 400)."""


def safe_name(name: str) -> str:
    """A file name with no folders in it (uploads never choose where they land)."""
    base = Path(name.replace("\\", "/")).name
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in base) or "file"


def original_name(path: Path) -> str:
    """The uploaded name of a file saved as `NNNNN-name`."""
    return path.name.split("-", 1)[-1]


class Budget:
    """The bytes and files one upload has left, and every byte it has written."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.bytes_left = limits.max_bytes
        self.files = 0
        self.written = 0  # bytes written to disk, partial files and removed zips included
        self._named = 0  # files named so far: a name is never given twice

    def take_bytes(self, n: int) -> None:
        if n > self.bytes_left:
            raise UploadTooLarge(
                f"the upload is larger than {self.limits.max_bytes // 2**20} MB (after "
                "unzipping); send one series at a time or ask for a higher --max-upload-mb"
            )
        self.bytes_left -= n
        self.written += n

    def take_file(self) -> int:
        if self.files >= self.limits.max_files:
            raise UploadTooLarge(
                f"more than {self.limits.max_files} files in one upload; send one series at a time"
            )
        self.files += 1
        return self.files - 1

    def target(self, folder: Path, name: str) -> Path:
        """Where the next file lands: numbered, with a safe name, inside `folder`."""
        self.take_file()
        self._named += 1
        return folder / f"{self._named - 1:05d}-{safe_name(name)}"


class FormReceiver:
    """A multipart/form-data body taken chunk by chunk (`feed`), each file part written
    into `folder` as it arrives within the limits; `finish` then unpacks zips and
    returns the files. The caller removes the folder whatever happens."""

    def __init__(self, content_type: str, folder: Path, limits: UploadLimits) -> None:
        from python_multipart.multipart import MultipartParser, parse_options_header

        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary or len(boundary) > 200:
            raise UnsafeUpload(
                "the upload is not multipart/form-data with a boundary; send the files "
                "from the page or as a form (curl -F files=@FILE)"
            )
        self.folder = folder
        self.budget = Budget(limits)
        self.saved: list[tuple[str, Path]] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._header_bytes = 0
        self._out: IO[bytes] | None = None
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        from python_multipart.exceptions import FormParserError

        try:
            self._parser.write(chunk)
        except FormParserError as err:
            raise UnsafeUpload(f"the upload is not a well-formed form: {err}") from err

    def finish(self) -> list[Path]:
        if not self._ended:
            raise UnsafeUpload("the upload ended before its last part; send it again")
        return unpack_zips(self.saved, self.folder, self.budget)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def _begin(self) -> None:
        self._headers, self._header_bytes = {}, 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._value += data[start:end]

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise UnsafeUpload(f"a part of the upload has over {MAX_HEADER_BYTES} bytes of headers")

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field, self._value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        filename = options.get(b"filename")
        if filename is None:  # a plain form field: counted, not kept
            return
        name = filename.decode("utf-8", "replace")
        target = self.budget.target(self.folder, name)
        self.saved.append((name, target))
        self._out = target.open("wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.budget.take_bytes(end - start)
        if self._out is not None:
            self._out.write(data[start:end])

    def _part_end(self) -> None:
        self.close()

    def _end(self) -> None:
        self._ended = True


def take_upload(
    files: list[tuple[str, IO[bytes]]], folder: Path, limits: UploadLimits
) -> list[Path]:
    """Files given as open streams (name, stream) into `folder`, zips unpacked, within
    `limits`: the same rules as a form received by FormReceiver."""
    budget = Budget(limits)
    saved: list[tuple[str, Path]] = []
    for name, stream in files:
        target = budget.target(folder, name)
        saved.append((name, target))
        with target.open("wb") as out:
            while chunk := stream.read(CHUNK):
                budget.take_bytes(len(chunk))
                out.write(chunk)
    return unpack_zips(saved, folder, budget)


def is_zip(path: Path, name: str) -> bool:
    """A zip by its name or its first bytes."""
    with path.open("rb") as handle:
        return name.lower().endswith(".zip") or handle.read(4) == b"PK\x03\x04"


def unpack_zips(saved: list[tuple[str, Path]], folder: Path, budget: Budget) -> list[Path]:
    """The files of an upload with every zip among them replaced by its members. A zip
    is not one of the series' files, and its own bytes no longer count once unpacked."""
    paths: list[Path] = []
    for name, path in saved:
        if not is_zip(path, name):
            paths.append(path)
            continue
        budget.files -= 1
        budget.bytes_left += path.stat().st_size
        try:
            paths += extract_zip(path, folder, budget)
        finally:
            path.unlink(missing_ok=True)
    return paths


def declared_directory(path: Path) -> tuple[int, int] | None:
    """(entries, central directory bytes) as a zip's end record declares them, read
    before zipfile parses (and holds in memory) the directory; None without one."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(max(0, size - 22 - 65535))
        tail = handle.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        entries, directory = struct.unpack_from("<HL", tail, at + 10)
        if entries == 0xFFFF or directory == 0xFFFFFFFF:  # zip64: its own end record
            locator = tail[max(0, at - 20) : at]
            if len(locator) < 20 or not locator.startswith(b"PK\x06\x07"):
                return None
            (offset,) = struct.unpack_from("<Q", locator, 8)
            handle.seek(offset)
            record = handle.read(56)
            if len(record) < 56 or not record.startswith(b"PK\x06\x06"):
                return None
            entries, directory = struct.unpack_from("<QQ", record, 32)
    return entries, directory


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's name, refused when it is absolute, climbs out with `..`, is a link
    (a symlink member could point anywhere once extracted) or is encrypted."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise UnsafeUpload(f"the zip member {info.filename!r} points outside the upload")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeUpload(f"the zip member {info.filename!r} is a link")
    if info.flag_bits & 0x1:
        raise UnsafeUpload(f"the zip member {info.filename!r} is encrypted; zip without a password")
    return name


def _check_declared(members: list[zipfile.ZipInfo], budget: Budget) -> None:
    """Refuse by what the zip declares, before inflating a byte."""
    limits = budget.limits
    if len(members) + budget.files > limits.max_files:
        raise UploadTooLarge(
            f"the zip holds {len(members)} files, more than the {limits.max_files} one upload "
            "may have; send one series at a time"
        )
    declared = 0
    for info in members:
        _member_name(info)
        if info.file_size > limits.max_ratio * max(info.compress_size, 1) + CHUNK:
            raise UnsafeUpload(
                f"the zip member {info.filename!r} declares {info.file_size} bytes from "
                f"{info.compress_size} ({info.file_size / max(info.compress_size, 1):.0f} times), "
                f"more than {limits.max_ratio:g} times: refused as a compression bomb"
            )
        declared += info.file_size
    if declared > budget.bytes_left:
        raise UploadTooLarge(
            f"the zip declares {declared // 2**20} MB unzipped, more than the "
            f"{limits.max_bytes // 2**20} MB one upload may have; send one series at a time"
        )


def extract_zip(path: Path, folder: Path, budget: Budget) -> list[Path]:
    """Every file of the zip at `path` into `folder` (flat, safe names), after checking
    what it declares, inflating no more than the budget and the ratio allow."""
    shown = original_name(path)
    limits = budget.limits
    declared = declared_directory(path)
    if declared is not None:
        entries, directory = declared
        if entries > limits.max_files or directory > limits.max_files * DIRECTORY_BYTES_PER_FILE:
            raise UploadTooLarge(
                f"{shown} declares {entries} entries in a {directory}-byte directory, more than "
                f"the {limits.max_files} files one upload may have; send one series at a time"
            )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as err:
        raise UnsafeUpload(f"{shown} is not a readable zip: {err}") from err
    saved: list[Path] = []
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        _check_declared(members, budget)
        for info in members:
            name = _member_name(info)
            target = budget.target(folder, name)
            try:
                with archive.open(info) as source:
                    _inflate(source, target, budget, info)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
                target.unlink(missing_ok=True)
                raise UnsafeUpload(
                    f"the zip member {name!r} cannot be read ({err}): a damaged or forged zip"
                ) from err
            saved.append(target)
    return saved


def _inflate(source: IO[bytes], target: Path, budget: Budget, info: zipfile.ZipInfo) -> None:
    """Copy a member out a chunk at a time, counting what it really inflates to."""
    inflated = 0
    try:
        with target.open("wb") as out:
            while chunk := source.read(CHUNK):
                inflated += len(chunk)
                if inflated > info.file_size:  # checked against the ratio before
                    raise UnsafeUpload(
                        f"the zip member {info.filename!r} inflates to more than the "
                        f"{info.file_size} bytes it declares: its size fields lie"
                    )
                budget.take_bytes(len(chunk))
                out.write(chunk)
    except InputError:
        target.unlink(missing_ok=True)
        raise
