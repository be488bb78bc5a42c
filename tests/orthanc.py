"""A real PACS for the tests: the local Orthanc renalflow starts for its demo and
benchmark (tasks/sources/orthanc.py), with a fixed password the tests give renalflow."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from renalflow.tasks.config import CALLING_AE
from renalflow.tasks.sources.orthanc import ORTHANC_AET, ORTHANC_USER, Orthanc
from renalflow.tasks.sources.orthanc import start_orthanc as _start

__all__ = ["ORTHANC_AET", "PASSWORD", "USER", "Orthanc", "start_orthanc"]

USER = ORTHANC_USER
PASSWORD = "orthanc-test-password"


@contextmanager
def start_orthanc(folder: Path, calling_ae: str = CALLING_AE) -> Iterator[Orthanc]:
    with _start(folder, calling_ae, password=PASSWORD) as server:
        yield server
