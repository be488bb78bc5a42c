"""Lesion truth: pydicom's real SEG objects, SEGs written by highdicom over a CT series,
and a lesions CSV, through ingest into a real store; each stored slice gets `lesion`
true, false or unknown."""

from __future__ import annotations

import copy
import csv
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from renalflow.tasks.annotations import read_lesions_csv, seg_lesions
from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.errors import InputError
from renalflow.tasks.ingest import (
    commit_batch,
    convert_files,
    discover_files,
    ingest_lesions_csv,
)
from renalflow.tasks.store import REJECTS, read_inventory, read_lesions, read_table
from tests.factory import binary_seg, ct_series, lesion_seg, save

CONFIG = PreprocessConfig(output_size=32)
N, LESION = 20, range(8, 14)


def test_pydicoms_liver_seg_is_read_but_is_no_renal_lesion():
    """A real SEG (a liver outline over three CT slices) from another toolkit."""
    ds = pydicom.dcmread(get_testdata_file("liver.dcm"))
    rows, described = seg_lesions(ds, "file:///liver.dcm")
    assert rows == [] and "Liver" in described and "no renal lesion segment" in described
    # Its structure is read right: with "liver" counted, its three frames' sources.
    rows, _ = seg_lesions(ds, "file:///liver.dcm", words=("liver",))
    sources = {
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in ds.PerFrameFunctionalGroupsSequence
    }
    assert {r.sop_instance_uid for r in rows} == sources and len(rows) == 3
    assert {r.series_instance_uid for r in rows} == {
        ds.ReferencedSeriesSequence[0].SeriesInstanceUID
    }


def _series(study: str, patient: str) -> list[pydicom.Dataset]:
    return ct_series(study, patient, n=N)


def _seg(source: list[pydicom.Dataset], organ: bool = False) -> pydicom.Dataset:
    return lesion_seg(source, LESION, organ=organ)


def _ingest(archive: Path, store: str) -> None:
    staged = convert_files(store, discover_files(str(archive)), CONFIG, "screening", {}, "run")
    commit_batch(store, staged, {}, "screening", "run", CONFIG.version)


@pytest.fixture
def studies(tmp_path):
    """Three studies: one with a lesion SEG, one the CSV annotates, one with nothing."""
    archive = tmp_path / "archive"
    by_seg, by_csv, bare = (_series(generate_uid(), p) for p in ("SEG", "CSV", "BARE"))
    for name, series in (("seg", by_seg), ("csv", by_csv), ("bare", bare)):
        for i, ds in enumerate(series):
            save(ds, archive / name / f"{i:03d}.dcm")
    save(_seg(by_seg), archive / "seg" / "lesion-seg.dcm")
    save(_seg(bare, organ=True), archive / "bare" / "kidney-seg.dcm")
    shutil_copy(get_testdata_file("test-SR.dcm"), archive / "bare" / "report.dcm")
    return archive, by_seg, by_csv, bare


def shutil_copy(source: str, target: Path) -> None:
    target.write_bytes(Path(source).read_bytes())


def _flags(store: str, archive: Path, series: list[pydicom.Dataset]) -> list[object]:
    inventory = read_inventory(store, archive.resolve().as_uri(), CONFIG.version).to_pandas()
    mine = inventory[inventory["series_instance_uid"] == series[0].SeriesInstanceUID]
    return mine.sort_values("z")["lesion"].tolist()


def test_seg_and_csv_mark_the_same_slices_and_other_series_stay_unknown(studies, tmp_path):
    archive, by_seg, by_csv, bare = studies
    store = str(tmp_path / "store")
    _ingest(archive, store)
    truth = [i in LESION for i in range(N)]
    assert _flags(store, archive, by_seg) == truth
    assert _flags(store, archive, bare) == [None] * N  # a kidney outline is no lesion truth
    assert _flags(store, archive, by_csv) == [None] * N  # until its CSV is ingested

    lesions_csv = tmp_path / "lesions.csv"
    with lesions_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["StudyInstanceUID", "SeriesInstanceUID", "first_SOPInstanceUID",
                         "last_SOPInstanceUID", "z_min", "z_max"])  # fmt: skip
        first, last = by_csv[LESION.start], by_csv[LESION.stop - 1]
        writer.writerow([first.StudyInstanceUID, first.SeriesInstanceUID,
                         first.SOPInstanceUID, last.SOPInstanceUID, "", ""])  # fmt: skip
    assert ingest_lesions_csv(store, str(lesions_csv), "run2") == 1
    assert _flags(store, archive, by_csv) == truth
    assert ingest_lesions_csv(store, str(lesions_csv), "run3") == 1  # again: no double rows
    assert len(read_lesions(store)) == len(LESION) + 1

    # The same range by z (mm along the slice normal) marks the same slices.
    by_z = tmp_path / "by_z.csv"
    by_z.write_text(
        "StudyInstanceUID,SeriesInstanceUID,z_min,z_max\n"
        f"{by_seg[0].StudyInstanceUID},{by_seg[0].SeriesInstanceUID},"
        f"{-100 + 3 * LESION.start},{-100 + 3 * (LESION.stop - 1)}\n"
    )
    rows = read_lesions_csv(str(by_z))
    assert (rows[0].z_min, rows[0].z_max) == (-76.0, -61.0)

    # SEG and SR objects are listed as what they are, not as unreadable files.
    rejects = read_table(store, REJECTS).to_pandas().set_index("source_uri")
    reasons = {Path(uri).name: row.reason for uri, row in rejects.iterrows()}
    codes = {Path(uri).name: row.reason_code for uri, row in rejects.iterrows()}
    assert codes == {"lesion-seg.dcm": "non_image", "kidney-seg.dcm": "non_image",
                     "report.dcm": "non_image"}  # fmt: skip
    assert "Renal mass: lesion on 6 slices" in reasons["lesion-seg.dcm"]
    assert "structured report" in reasons["report.dcm"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("patient_id,label\nP1,benign\n", "needs the columns StudyInstanceUID"),
        ("StudyInstanceUID,SeriesInstanceUID,z_min,z_max\n1.2,1.3,abc,4\n", "line 2: z_min"),
        ("StudyInstanceUID,SeriesInstanceUID,z_min,z_max\n1.2,1.3,3,\n", "both ends"),
    ],
)
def test_a_broken_lesions_csv_is_named_with_its_line(tmp_path, text, message):
    path = tmp_path / "lesions.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_lesions_csv(str(path))


def test_a_seg_made_elsewhere_over_real_ct_slices_marks_its_lesion_frames():
    """A SEG renalflow did not write: highdicom over a series made of the real CT slices
    pydicom ships (CT_small and pydicom-data's 693 CT, each at a few positions)."""
    for name, lesion in (("CT_small.dcm", [1, 2]), ("693_UNCR.dcm", [0])):
        real = pydicom.dcmread(get_testdata_file(name))
        real.FrameOfReferenceUID = real.get("FrameOfReferenceUID") or generate_uid()
        for keyword in ("AccessionNumber", "ReferringPhysicianName", "StudyID"):
            setattr(real, keyword, real.get(keyword, ""))
        series = []
        for i in range(4):  # the same real slice at four positions, as a small series
            ds = copy.deepcopy(real)
            ds.SOPInstanceUID = generate_uid()
            ds.ImagePositionPatient = [*real.ImagePositionPatient[:2], 5.0 * i]
            ds.InstanceNumber = i + 1
            series.append(ds)
        mask = np.zeros((4, real.Rows, real.Columns), bool)
        mask[lesion, 10:20, 10:20] = True
        tumour = hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="Tumor",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        seg = binary_seg(
            series, mask, tumour, series_number=50, manufacturer="another vendor", model="segmenter"
        )
        reread = pydicom.dcmread(_bytes(seg))
        rows, described = seg_lesions(reread, f"file:///{name}.seg")
        assert {r.sop_instance_uid for r in rows} == {series[i].SOPInstanceUID for i in lesion}
        assert {r.series_instance_uid for r in rows} == {real.SeriesInstanceUID}
        assert {r.study_instance_uid for r in rows} == {real.StudyInstanceUID}
        assert f"lesion on {len(lesion)} slices" in described


def _bytes(ds: pydicom.Dataset) -> BytesIO:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer
