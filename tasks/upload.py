"""Uploads from the network, taken in with bounds: a copy to disk that stops at the size
limit while reading, and zip extraction that counts what it really inflates (never the
sizes a zip declares), refuses paths that would leave the upload folder, too many
entries and too high compression ratios. Plain functions; the web page calls them.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from renalflow.tasks.errors import InputError

CHUNK = 1 << 20  # bytes read at a time: memory per upload stays at one chunk


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may make the server do (our choices, except max_bytes, the
    page's --max-upload-mb).

    Attributes:
        max_bytes: bytes received and bytes written after unzipping, each.
        max_files: files in one upload, zip members included (a CT series is 50-600).
        max_ratio: a zip member that inflates more than this many times its compressed
            size is refused (DICOM compresses 2-5x; a bomb thousands of times).
    """

    max_bytes: int
    max_files: int = 3000
    max_ratio: float = 100.0


class UploadTooLarge(InputError):
    """More bytes or files than the limits allow (HTTP 413)."""


class UnsafeUpload(InputError):
    """An upload that cannot be taken as sent: a corrupt zip, a path out of the folder,
    a compression bomb (HTTP 400)."""


def safe_name(name: str) -> str:
    """A file name with no folders in it (uploads never choose where they land)."""
    base = Path(name.replace("\\", "/")).name
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in base) or "file"


class Budget:
    """The bytes and files one upload has left."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.bytes_left = limits.max_bytes
        self.files = 0

    def take_bytes(self, n: int) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise UploadTooLarge(
                f"the upload is larger than {self.limits.max_bytes // 2**20} MB (after "
                "unzipping); send one series at a time or ask for a higher --max-upload-mb"
            )

    def take_file(self) -> int:
        self.files += 1
        if self.files > self.limits.max_files:
            raise UploadTooLarge(
                f"more than {self.limits.max_files} files in one upload; send one series at a time"
            )
        return self.files - 1


def copy_bounded(source: IO[bytes], target: Path, budget: Budget) -> int:
    """Copy `source` to `target` a chunk at a time, stopping as soon as the budget runs
    out (the partial file is removed). Returns the bytes written."""
    written = 0
    try:
        with target.open("wb") as out:
            while chunk := source.read(CHUNK):
                budget.take_bytes(len(chunk))
                out.write(chunk)
                written += len(chunk)
    except UploadTooLarge:
        target.unlink(missing_ok=True)
        raise
    return written


def _member_path(info: zipfile.ZipInfo) -> str:
    """The member's name, refused when it is absolute, climbs out with `..`, or is a
    link (a symlink member could point anywhere once extracted)."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise UnsafeUpload(f"the zip member {info.filename!r} points outside the upload")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeUpload(f"the zip member {info.filename!r} is a link")
    return name


def extract_zip(path: Path, folder: Path, budget: Budget) -> list[Path]:
    """Every file of the zip at `path` into `folder` (flat, safe names), inflating no
    more than the budget allows and refusing bombs by what they really inflate to."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise UnsafeUpload(f"{path.name.split('-', 1)[-1]} is not a readable zip: {err}") from err
    saved: list[Path] = []
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) + budget.files > budget.limits.max_files:
            raise UploadTooLarge(
                f"the zip holds {len(members)} files, more than the {budget.limits.max_files} "
                "one upload may have; send one series at a time"
            )
        for info in members:
            name = _member_path(info)
            index = budget.take_file()
            target = folder / f"{index:05d}-{safe_name(name)}"
            allowed = max(CHUNK, int(budget.limits.max_ratio * max(info.compress_size, 1)))
            try:
                with archive.open(info) as source:
                    _inflate(source, target, budget, allowed, name)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
                target.unlink(missing_ok=True)
                raise UnsafeUpload(f"the zip member {name!r} cannot be read: {err}") from err
            saved.append(target)
    return saved


def _inflate(source: IO[bytes], target: Path, budget: Budget, allowed: int, name: str) -> None:
    written = 0
    try:
        with target.open("wb") as out:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                if written > allowed:
                    raise UnsafeUpload(
                        f"the zip member {name!r} inflates more than "
                        f"{budget.limits.max_ratio:g} times its compressed size: refused as "
                        "a compression bomb"
                    )
                budget.take_bytes(len(chunk))
                out.write(chunk)
    except InputError:
        target.unlink(missing_ok=True)
        raise


def is_zip(path: Path, name: str) -> bool:
    """A zip by its name or its first bytes."""
    with path.open("rb") as handle:
        return name.lower().endswith(".zip") or handle.read(4) == b"PK\x03\x04"


def take_upload(
    files: list[tuple[str, IO[bytes]]], folder: Path, limits: UploadLimits
) -> list[Path]:
    """The uploaded files (zips unpacked) in `folder`, within `limits`."""
    budget = Budget(limits)
    saved: list[Path] = []
    for name, stream in files:
        index = budget.take_file()
        target = folder / f"{index:05d}-{safe_name(name)}"
        copy_bounded(stream, target, budget)
        if is_zip(target, name):
            budget.files -= 1  # the zip itself is not one of the series' files
            budget.bytes_left += target.stat().st_size
            try:
                saved += extract_zip(target, folder, budget)
            finally:
                target.unlink(missing_ok=True)
        else:
            saved.append(target)
    return saved


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
