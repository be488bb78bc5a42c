"""Build small CT datasets in memory for tests (pydicom Dataset + FileMetaDataset)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

HOSTILE = '<script>alert("x")</script>'
"""A value that must reach a page as text, never as markup."""
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"
"""HOSTILE as an escaping template writes it."""

AXIAL = ["1", "0", "0", "0", "1", "0"]
CORONAL = ["1", "0", "0", "0", "0", "-1"]


def make_ct(
    stored: np.ndarray | None = None,
    *,
    signed: bool = False,
    bits_stored: int = 12,
    intercept: float | None = -1024.0,
    slope: float | None = 1.0,
    orientation: list[str] | None = None,
    **tags: Any,
) -> Dataset:
    """A minimal but valid single-frame CT slice; keyword arguments set or override tags."""
    if stored is None:
        stored = np.full((16, 16), 1024, dtype=np.int16 if signed else np.uint16)
    meta = FileMetaDataset()
    sop = generate_uid()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientID = "P1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.ImageOrientationPatient = orientation or AXIAL
    ds.ImagePositionPatient = ["0", "0", "-100.5"]
    ds.PixelSpacing = ["0.7", "0.7"]
    ds.SliceThickness = "3.0"
    ds.KVP = "120"
    ds.Manufacturer = "TEST"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if intercept is not None:
        ds.RescaleIntercept = f"{intercept:g}"
    if slope is not None:
        ds.RescaleSlope = f"{slope:g}"
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    ds["PixelData"].VR = "OW"
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def save(ds: Dataset, path: Path, syntax: str | UID = ExplicitVRLittleEndian) -> Path:
    """Write `ds` in `syntax` (compressing when needed) as a DICOM Part 10 file."""
    ds = copy.deepcopy(ds)
    syntax = UID(syntax)
    if not syntax.is_little_endian:
        pixels = np.frombuffer(ds.PixelData, dtype="<u2").astype(">u2")
        ds.PixelData = pixels.tobytes()
    if syntax.is_compressed:
        ds.compress(syntax, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def save_without_meta(ds: Dataset, path: Path) -> Path:
    """Write the bare dataset (implicit VR, no preamble, no file meta), as old PACS exports do."""
    ds = copy.deepcopy(ds)
    ds.file_meta = FileMetaDataset()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    if path.read_bytes()[:2] != b"\x08\x00":
        raise AssertionError("expected a bare dataset starting with group 0008")
    return path


def curated_archive(
    root: Path, *, patients: int, seed: int, slices: int, jobs: int = 1, **config: Any
) -> Path:
    """ROOT/archive: a synthetic archive in the paper's curated format (only slices through
    the mass, at most `slices` a series), beside ROOT/labels.csv; `config` sets the other
    SynthConfig fields."""
    from renalflow.tasks.synth import SynthConfig, synthesize_archive

    synth = SynthConfig(
        patients=patients, seed=seed, max_slices_per_series=slices, lesion_only=True, **config
    )
    synthesize_archive(root, synth, jobs=jobs)
    return root / "archive"


def start_cli(*args: str, **popen: Any) -> subprocess.Popen[str]:
    """`renalflow ARGS` started in a new Python process, its output (stdout and stderr
    together unless `popen` says otherwise) read as text."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, **popen}
    return subprocess.Popen(
        [sys.executable, "-m", "renalflow.flows.cli", *args], text=True, **options
    )


def build_store(root: Path, *, patients: int, seed: int, size: int = 64) -> str:
    """A small labelled slice store of curated slices through the mass (a synthetic
    archive), ingested as `renalflow ingest` does, without Prefect or Dask."""
    from renalflow.tasks.synth import SynthConfig

    synth = SynthConfig(
        patients=patients, seed=seed, benign_fraction=0.4, max_slices_per_series=4, lesion_only=True
    )
    return _ingested(root, synth, size)


def build_whole_store(root: Path, *, patients: int, seed: int, size: int = 64) -> str:
    """A store of whole abdominal studies (and some chest CTs, never annotated): the SEG
    objects in the archive give each slice's lesion."""
    from renalflow.tasks.synth import SynthConfig

    synth = SynthConfig(
        patients=patients, seed=seed, benign_fraction=0.4, matrix=size, study_slices=(24, 30),
        chest_share=0.3, head_share=0.0, scout_share=0.0, twin_share=0.0,
    )  # fmt: skip
    return _ingested(root, synth, size)


def _ingested(root: Path, synth: Any, size: int) -> str:
    """ROOT/synth written from `synth` and ingested into ROOT/store at `size` pixels."""
    from renalflow.tasks.config import DEVELOPMENT, PreprocessConfig
    from renalflow.tasks.ingest import commit_batch, convert_files, discover_files, read_labels
    from renalflow.tasks.store import check_manifest
    from renalflow.tasks.synth import synthesize_archive

    synthesize_archive(root / "synth", synth, jobs=2)
    store = str(root / "store")
    config = PreprocessConfig(output_size=size)
    check_manifest(store, config.to_dict(), config.version)  # as ingest makes the store
    uris = discover_files(str(root / "synth" / "archive"))
    labels = read_labels(str(root / "synth" / "labels.csv"))
    staged = convert_files(store, uris, config, DEVELOPMENT, labels, "run")
    commit_batch(store, staged, {}, DEVELOPMENT, "run", config.version)
    return store


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    from renalflow.tasks.sources.orthanc import free_port as _free_port

    return _free_port()


def ct_series(
    study: str,
    patient: str,
    *,
    n: int = 20,
    thickness: float = 3.0,
    start: float = -100.0,
    frame_of_reference: str | None = None,
    **tags: Any,
) -> list[Dataset]:
    """An axial CT series of `n` slices `thickness` mm apart, with the patient and study
    attributes a DICOM SEG writer (highdicom) asks of its source images."""
    series, frame = generate_uid(), frame_of_reference or generate_uid()
    base: dict[str, Any] = {
        "PatientName": "Test^Patient", "PatientBirthDate": "19500101", "PatientSex": "F",
        "StudyDate": "20240101", "StudyTime": "120000", "AccessionNumber": "A1",
        "ReferringPhysicianName": "", "StudyID": "1", "SeriesNumber": 1,
        "AcquisitionNumber": 1, "BodyPartExamined": "ABDOMEN",
    }  # fmt: skip
    base.update(tags)
    return [
        make_ct(
            PatientID=patient,
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            FrameOfReferenceUID=frame,
            InstanceNumber=i + 1,
            ImagePositionPatient=["0", "0", str(start + thickness * i)],
            SliceThickness=str(thickness),
            **base,
        )
        for i in range(n)
    ]


def lesion_seg(source: list[Dataset], frames: range, *, organ: bool = False) -> Dataset:
    """A DICOM SEG written by highdicom over `source`: a renal mass on the slices
    `frames`, or (organ) a kidney outline there, which is no lesion."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    rows, columns = int(source[0].Rows), int(source[0].Columns)
    mask = np.zeros((len(source), rows, columns), bool)
    mask[frames.start : frames.stop, rows // 4 : rows // 2, columns // 4 : columns // 2] = True
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Left kidney" if organ else "Renal mass",
        segmented_property_category=codes.SCT.Organ
        if organ
        else codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Kidney if organ else codes.SCT.Mass,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    return binary_seg(source, mask, description)


def binary_seg(
    source: list[Dataset],
    mask: np.ndarray,
    description: Any,
    *,
    series_number: int = 99,
    manufacturer: str = "renalflow tests",
    model: str = "highdicom",
) -> Dataset:
    """A binary DICOM SEG written by highdicom over `source`: one segment (a highdicom
    SegmentDescription), `mask` a frame per source slice."""
    import highdicom as hd

    return hd.seg.Segmentation(
        source_images=source,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=model,
        software_versions="1",
        device_serial_number="1",
    )


def start_moto(env: dict[str, str] | None = None) -> tuple[Any, str]:
    """moto's S3 server on a free loopback port, in a process of its own; returns the
    process and its URL once it answers (an anonymous request gets 403 when `env`
    turns authentication on, INITIAL_NO_AUTH_ACTION_COUNT=0)."""
    import os
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return server, url
        except urllib.error.HTTPError:
            return server, url  # it answers
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.2)
