"""Where an archive comes from: a folder or fsspec URI (read in place), or a PACS reached
over DICOMweb (`dicomweb+https://host/dicom-web`) or DIMSE (`dimse://AET@host:port`).

A PACS is queried, then only the CT series the screening needs are fetched, one study at
a time, into a cache folder inside the slice store (`pacs_root`); that folder is then
ingested exactly like an archive folder, so every fetched instance meets the same
conversion and reject rules. What was delivered, and what failed with which reason, is
kept beside it (tasks/sources/watermark.py), so a rerun fetches nothing twice.

This module parses sources and names their folders; it imports no PACS client, so a
folder archive never needs the `pacs` extra.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from renalflow.tasks.errors import InputError


class SourceKind(StrEnum):
    """How an archive is reached."""

    FOLDER = "folder"  # a local folder or an fsspec URI (file://, s3://, memory://)
    DICOMWEB = "dicomweb"  # QIDO-RS to find, WADO-RS to fetch
    DIMSE = "dimse"  # C-FIND to find, C-GET to fetch


DICOMWEB_SCHEMES = ("dicomweb+http", "dicomweb+https")
DIMSE_SCHEME = "dimse"

PACS_FOLDER = "_pacs"
"""Where in the slice store the instances fetched from PACS sources live, one folder per
source (never read as data by the store: its tables are folders of their own)."""
INSTANCES = "instances"
"""The cache of one source: STUDY/SERIES/SOP.dcm, ingested as that source's archive."""
EVIDENCE = "evidence"
"""Headers (no pixels) of a pruned study's instances, STUDY/SERIES/SOP.dcm as in the
cache: what an SR sent later still cites (`--prune-cache`)."""


class PacsError(InputError):
    """A PACS that cannot be used as given: refused credentials or AE title, a URL or
    study it does not know. The message is one line saying what to do."""


class PacsUnavailableError(PacsError, ConnectionError):
    """A PACS that is busy or unreachable right now (HTTP 429/502/503/504, a dropped
    connection, an association that timed out or was aborted): worth retrying later.
    A ConnectionError, so the flows' retry condition (errors.is_transient_io) sees it."""


class StudyNotDelivered(PacsError):
    """One study the PACS listed but did not deliver (gone since the query, a retrieval
    that ended with failures): recorded in the watermark and retried on the next run."""


_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 characters, no backslash


def check_ae_title(title: str, what: str) -> str:
    """An AE title as DICOM allows it (1-16 printable characters, no backslash)."""
    if not _AE_TITLE.match(title) or not title.strip():
        raise InputError(
            f"{what} {title!r} is not a valid AE title: 1 to 16 printable characters, "
            "no backslash (ask the PACS administrator for the exact title)"
        )
    return title.strip()


@dataclass(frozen=True)
class PacsSource:
    """A PACS named by an archive URI. Credentials are never part of it (see
    tasks/sources/credentials.py): the URI may be printed, logged and stored."""

    kind: SourceKind
    host: str
    port: int
    url: str = ""  # DICOMweb: the service's http(s) base URL
    called_ae: str = ""  # DIMSE: the PACS's AE title
    uri: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        """A folder name for this source: readable, and distinct for distinct sources."""
        if self.kind is SourceKind.DIMSE:
            name = f"dimse-{self.called_ae}-{self.host}-{self.port}"
        else:
            name = f"dicomweb-{self.host}-{self.port}"
        readable = re.sub(r"[^A-Za-z0-9.-]+", "_", name)
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:8]
        return f"{readable}-{digest}"


def is_pacs(archive: str) -> bool:
    """Whether `archive` names a PACS rather than a folder or an fsspec URI."""
    scheme = archive.split("://", 1)[0].lower() if "://" in archive else ""
    return scheme in (*DICOMWEB_SCHEMES, DIMSE_SCHEME)


def parse_source(archive: str) -> PacsSource:
    """The PACS an archive URI names, or one line saying how to write it.

    `dicomweb+https://host[:port]/path` (or dicomweb+http://) is a DICOMweb service at
    https://host[:port]/path; `dimse://AET@host:port` is a DIMSE peer whose AE title is
    AET. User names and passwords never go in the URI (it is printed and stored).
    """
    parts = urlsplit(archive)
    scheme = parts.scheme.lower()
    if scheme not in (*DICOMWEB_SCHEMES, DIMSE_SCHEME):
        raise InputError(f"{archive} is not a PACS URI (dicomweb+https://... or dimse://...)")
    if parts.password is not None or (scheme != DIMSE_SCHEME and parts.username):
        raise InputError(
            "do not put credentials in the archive URI (it is printed and stored): set "
            "RENALFLOW_PACS_TOKEN, or RENALFLOW_PACS_USER and RENALFLOW_PACS_PASSWORD "
            "(or their _FILE variants)"
        )
    try:
        port = parts.port
    except ValueError as err:
        raise InputError(f"{archive}: the port is not a number from 1 to 65535") from err
    host = parts.hostname or ""
    if not host:
        raise InputError(f"{archive}: no host; write {scheme}://HOST...")
    if scheme == DIMSE_SCHEME:
        if not parts.username or port is None:
            raise InputError(
                f"{archive}: a DIMSE source is dimse://AET@HOST:PORT (the PACS's AE title, "
                "host and DICOM port, from its administrator)"
            )
        called = check_ae_title(parts.username, "the called AE title")
        return PacsSource(SourceKind.DIMSE, host, port, called_ae=called, uri=archive)
    http = scheme.removeprefix("dicomweb+")
    port = port or (443 if http == "https" else 80)
    netloc = parts.netloc
    url = f"{http}://{netloc}{parts.path.rstrip('/')}"
    return PacsSource(SourceKind.DICOMWEB, host, port, url=url, uri=archive)


def plain_http_warning(source: PacsSource) -> str | None:
    """What to tell the user when a DICOMweb source beyond this machine is plain HTTP."""
    if source.kind is not SourceKind.DICOMWEB or not source.url.startswith("http://"):
        return None
    if source.host in ("localhost", "::1") or source.host.startswith("127."):
        return None
    return (
        f"{source.url} is plain HTTP: credentials and images cross the network unencrypted; "
        "use dicomweb+https:// if the PACS offers it"
    )


def pacs_root(store: str, source: PacsSource) -> str:
    """The folder of `source` inside the slice store (its cache and its watermark)."""
    base = store.rstrip("/")
    if "://" not in base:
        base = os.path.abspath(base)
    return f"{base}/{PACS_FOLDER}/{source.key}"


def check_pacs_store(store: str) -> None:
    """A PACS source needs a slice store on this machine or a mounted share: its
    instance cache and watermark are files written whole and then moved into place
    (renalflow's choice; object storage has no such move)."""
    scheme = store.split("://", 1)[0].lower() if "://" in store else "file"
    if scheme not in ("file", "local"):
        raise InputError(
            f"a PACS archive needs a slice store on a local or mounted disk, not {store}: "
            "give --store a folder (the results may still go to object storage)"
        )


def instances_folder(store: str, source: PacsSource) -> str:
    """The cache of instances fetched from `source`: the archive its slices come from."""
    return f"{pacs_root(store, source)}/{INSTANCES}"


def archive_folder(archive: str, store: str) -> str:
    """What ingest reads for `archive`: the archive itself, or a PACS source's cache."""
    if is_pacs(archive):
        return instances_folder(store, parse_source(archive))
    return archive


_UID = re.compile(r"^[0-9][0-9.]{0,63}$")


def uid_name(uid: str) -> str:
    """A UID as a file or folder name; anything that is not a plain UID is hashed, so a
    PACS can never name a path outside the cache."""
    if _UID.match(uid) and ".." not in uid:
        return uid
    return "x" + hashlib.sha256(uid.encode()).hexdigest()[:40]


def evidence_uri(instance_uri: str) -> str:
    """Where the header of a cached instance is kept once its study is pruned (the same
    path under EVIDENCE instead of INSTANCES)."""
    head, found, tail = instance_uri.rpartition(f"/{INSTANCES}/")
    return f"{head}/{EVIDENCE}/{tail}" if found else instance_uri


def write_whole(fs: Any, path: str, data: bytes, temporary: str | None = None) -> None:
    """Write `data` at `path` on filesystem `fs` whole: first at `temporary` (default:
    beside it), then moved into place, so a crash leaves the whole file or none."""
    temporary = temporary or f"{path}.partial"
    for folder in {temporary.rsplit("/", 1)[0], path.rsplit("/", 1)[0]}:
        fs.makedirs(folder, exist_ok=True)
    fs.pipe_file(temporary, data)
    fs.mv(temporary, path)


def instance_path(folder: str, study: str, series: str, sop: str) -> str:
    """Where one fetched instance is cached."""
    return "/".join((folder, uid_name(study), uid_name(series), uid_name(sop) + ".dcm"))
