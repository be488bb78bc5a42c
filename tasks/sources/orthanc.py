"""A PACS on this machine: Debian's Orthanc (`make pacs` installs it) with its DICOMweb
plugin, started on loopback with free ports and its own storage folder, HTTP basic
authentication on, and renalflow's AE title registered for DIMSE. The tests, the
benchmark and `renalflow demo --pacs` all start it here.

Never a hospital's PACS: it listens on 127.0.0.1 only and stops with the block that
started it.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from renalflow.tasks.config import CALLING_AE
from renalflow.tasks.errors import InputError, RenalflowError

ORTHANC_AET = "ORTHANC"
ORTHANC_USER = "renalflow"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
START_TIMEOUT_S = 60.0
"""renalflow's choice: how long Orthanc may take to answer after it is started."""


class OrthancError(RenalflowError):
    """The local Orthanc did not start or did not take what it was sent."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    folder: Path
    user: str = ORTHANC_USER
    password: str = ""

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """The archive URI renalflow takes for its DICOMweb service."""
        return f"dicomweb+http://127.0.0.1:{self.http_port}/dicom-web"

    def dimse(self, aet: str = ORTHANC_AET) -> str:
        """The archive URI renalflow takes for its DIMSE service."""
        return f"dimse://{aet}@127.0.0.1:{self.dicom_port}"

    def _session(self) -> requests.Session:
        session = requests.Session()
        session.auth = (self.user, self.password)
        return session

    def upload(self, files: Iterable[Path]) -> int:
        """Store files through Orthanc's REST API (as a modality would send them)."""
        n = 0
        with self._session() as session:
            for path in files:
                answer = session.post(f"{self.rest}/instances", data=path.read_bytes())
                if not answer.ok:
                    raise OrthancError(f"Orthanc refused {path} (HTTP {answer.status_code})")
                n += 1
        return n

    def delete_study(self, study_instance_uid: str) -> None:
        with self._session() as session:
            query: dict[str, Any] = {
                "Level": "Study",
                "Query": {"StudyInstanceUID": study_instance_uid},
            }
            found = session.post(f"{self.rest}/tools/find", json=query)
            found.raise_for_status()
            if not found.json():
                raise OrthancError(f"Orthanc has no study {study_instance_uid} to delete")
            for study in found.json():
                session.delete(f"{self.rest}/studies/{study}").raise_for_status()

    def qido(self, level: str, **filters: str) -> list[dict[str, Any]]:
        """A QIDO-RS search (`studies`, `series` or `instances`), as a viewer asks."""
        with self._session() as session:
            answer = session.get(f"{self.rest}/dicom-web/{level}", params=filters)
            answer.raise_for_status()
            return list(answer.json()) if answer.content else []

    def delete_modality(self, modality: str) -> None:
        """Delete every series of `modality`."""
        with self._session() as session:
            query: dict[str, Any] = {"Level": "Series", "Query": {"Modality": modality}}
            found = session.post(f"{self.rest}/tools/find", json=query)
            found.raise_for_status()
            for series in found.json():
                session.delete(f"{self.rest}/series/{series}").raise_for_status()


def check_orthanc() -> str:
    """The Orthanc executable, or one line saying how to install it with its plugin."""
    executable = shutil.which("Orthanc")
    if executable is None or not Path(DICOMWEB_PLUGIN).exists():
        raise InputError(
            "Orthanc and its DICOMweb plugin are not installed: run `make pacs` (Debian's "
            "orthanc and orthanc-dicomweb)"
        )
    return executable


@contextmanager
def start_orthanc(
    folder: Path, calling_ae: str = CALLING_AE, password: str | None = None
) -> Iterator[Orthanc]:
    """Orthanc on 127.0.0.1 until the block ends; its database lives in `folder`. The
    password of its one user is `password`, or a new random one."""
    executable = check_orthanc()
    folder.mkdir(parents=True, exist_ok=True)
    server = Orthanc(free_port(), free_port(), folder, password=password or secrets.token_hex(16))
    config = {
        "Name": "renalflow-local",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "Plugins": [DICOMWEB_PLUGIN],
        "HttpPort": server.http_port,
        "DicomPort": server.dicom_port,
        "DicomAet": ORTHANC_AET,
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {server.user: server.password},
        "DicomModalities": {"renalflow": [calling_ae, "127.0.0.1", free_port()]},
        "DicomCheckModalityHost": True,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)  # it holds the password
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen([executable, str(path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if requests.get(f"{server.rest}/system", auth=(server.user, server.password)).ok:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise OrthancError(f"Orthanc did not start; see {folder / 'orthanc.log'}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        process.wait(30)
        log.close()
