"""A real PACS for the tests: Orthanc from Debian (`make pacs` installs it) with its
DICOMweb plugin, started on loopback with free ports and a temporary storage folder,
HTTP basic authentication on, and renalflow's AE title registered for DIMSE.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.factory import free_port

ORTHANC_AET = "ORTHANC"
USER = "renalflow"
PASSWORD = "orthanc-test-password"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    folder: Path

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

    def upload(self, files: Iterable[Path]) -> int:
        """Store files through Orthanc's REST API (as a modality would send them)."""
        n = 0
        with requests.Session() as session:
            session.auth = (USER, PASSWORD)
            for path in files:
                answer = session.post(f"{self.rest}/instances", data=path.read_bytes())
                answer.raise_for_status()
                n += 1
        return n

    def delete_study(self, study_instance_uid: str) -> None:
        with requests.Session() as session:
            session.auth = (USER, PASSWORD)
            query = {"Level": "Study", "Query": {"StudyInstanceUID": study_instance_uid}}
            found = session.post(f"{self.rest}/tools/find", json=query)
            found.raise_for_status()
            assert found.json(), f"no study {study_instance_uid} to delete"
            for study in found.json():
                session.delete(f"{self.rest}/studies/{study}").raise_for_status()

    def qido(self, level: str, **filters: str) -> list[dict[str, Any]]:
        """A QIDO-RS search (`studies`, `series` or `instances`), as a viewer asks."""
        with requests.Session() as session:
            session.auth = (USER, PASSWORD)
            answer = session.get(f"{self.rest}/dicom-web/{level}", params=filters)
            answer.raise_for_status()
            return list(answer.json()) if answer.content else []

    def delete_modality(self, modality: str) -> None:
        """Delete every series of `modality` (what a test sent to the PACS)."""
        with requests.Session() as session:
            session.auth = (USER, PASSWORD)
            query = {"Level": "Series", "Query": {"Modality": modality}}
            found = session.post(f"{self.rest}/tools/find", json=query)
            found.raise_for_status()
            for series in found.json():
                session.delete(f"{self.rest}/series/{series}").raise_for_status()


@contextmanager
def start_orthanc(folder: Path, calling_ae: str = "RENALFLOW") -> Iterator[Orthanc]:
    """Orthanc on 127.0.0.1 until the block ends; its database lives in `folder`."""
    executable = shutil.which("Orthanc")
    if executable is None:
        raise RuntimeError("Orthanc is not installed: run `make pacs` (Debian's orthanc)")
    folder.mkdir(parents=True, exist_ok=True)
    server = Orthanc(free_port(), free_port(), folder)
    config = {
        "Name": "renalflow-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "Plugins": [DICOMWEB_PLUGIN],
        "HttpPort": server.http_port,
        "DicomPort": server.dicom_port,
        "DicomAet": ORTHANC_AET,
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomModalities": {"renalflow": [calling_ae, "127.0.0.1", free_port()]},
        "DicomCheckModalityHost": True,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen([executable, str(path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{server.rest}/system", auth=(USER, PASSWORD)).ok:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start; see {folder / 'orthanc.log'}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        process.wait(30)
        log.close()
