"""The lesion truth a whole-study archive carries: SEG objects and lesions.csv agree,
and ingest turns them into each slice's `lesion`."""

import csv
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from renalflow.tasks.annotations import lesion_flags, read_lesions_csv, seg_lesions
from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.ingest import commit_batch, convert_files, discover_files, read_labels
from renalflow.tasks.store import REJECTS, check_manifest, read_slices, read_table
from renalflow.tasks.synth import SynthConfig, archive_digest, synthesize_archive

WHOLE = dict(matrix=64, study_slices=(12, 20), chest_share=1.0, twin_share=1.0, scout_share=1.0)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg")
    synthesize_archive(out, SynthConfig(patients=3, seed=515, **WHOLE), jobs=1)
    return out


def _files(out: Path) -> list[pydicom.Dataset]:
    paths = [p for p in (out / "archive").rglob("*") if p.is_file()]
    return [pydicom.dcmread(p) for p in sorted(paths)]


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame([asdict(r) for r in rows])


def test_seg_and_csv_give_the_same_lesion_slices(archive: Path):
    files = _files(archive)
    segs = [ds for ds in files if ds.Modality == "SEG"]
    slices = pd.DataFrame(
        [
            {
                "series_instance_uid": str(ds.SeriesInstanceUID),
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "z": float(ds.ImagePositionPatient[2]),
            }
            for ds in files
            if ds.Modality == "CT" and "LOCALIZER" not in ds.ImageType
        ]
    )
    from_seg = []
    for ds in segs:
        rows, described = seg_lesions(ds, "seg.dcm")
        assert rows and "Renal mass" in described
        from_seg.extend(rows)
    from_csv = read_lesions_csv(str(archive / "lesions.csv"))
    assert len(segs) == len(from_csv) >= 3 * 2  # a SEG per abdominal series, and a row
    by_seg = lesion_flags(slices, _frame(from_seg))
    by_csv = lesion_flags(slices, _frame(from_csv))
    assert by_seg.tolist() == by_csv.tolist()
    assert {True, False, None} == set(by_seg.tolist())  # chest CT: unknown
    assert by_seg.eq(True).sum() == len({r.sop_instance_uid for r in from_seg})


def test_a_seg_references_the_slices_it_marks(archive: Path):
    files = _files(archive)
    by_sop = {str(ds.SOPInstanceUID): ds for ds in files}
    seg = next(ds for ds in files if ds.Modality == "SEG")
    rows, _ = seg_lesions(seg, "seg.dcm")
    marked = [by_sop[r.sop_instance_uid] for r in rows]
    assert {str(ds.SeriesInstanceUID) for ds in marked} == {r.series_instance_uid for r in rows}
    assert {str(ds.StudyInstanceUID) for ds in marked} == {str(seg.StudyInstanceUID)}
    assert seg.FrameOfReferenceUID == marked[0].FrameOfReferenceUID
    assert seg.NumberOfFrames == len(marked)


def test_seg_objects_are_the_same_bytes_for_the_same_seed(tmp_path: Path):
    config = SynthConfig(patients=1, seed=516, **WHOLE)
    synthesize_archive(tmp_path / "a", config, jobs=1)
    synthesize_archive(tmp_path / "b", config, jobs=1)
    assert archive_digest(tmp_path / "a") == archive_digest(tmp_path / "b")


def test_ingest_keeps_the_lesion_truth_of_a_whole_study_archive(archive: Path, tmp_path: Path):
    store = str(tmp_path / "store")
    config = PreprocessConfig(output_size=32)
    check_manifest(store, config.to_dict(), config.version)
    labels = read_labels(str(archive / "labels.csv"))
    uris = discover_files(str(archive / "archive"))
    staged = convert_files(store, uris, config, "development", labels, "run")
    commit_batch(store, staged, {}, "development", "run", config.version)
    meta, _ = read_slices(store)
    segs = [ds for ds in _files(archive) if ds.Modality == "SEG"]
    marked = {r.sop_instance_uid for ds in segs for r in seg_lesions(ds, "seg")[0]}
    ends = read_lesions_csv(str(archive / "lesions.csv"))  # first and last lesion slices
    assert {r.first_sop_instance_uid for r in ends} | {
        r.last_sop_instance_uid for r in ends
    } <= marked
    assert set(meta.loc[meta["lesion"].eq(True), "sop_instance_uid"]) == marked
    study_of = {
        r["series_instance_uid"]: r["study"]
        for r in csv.DictReader((archive / "series.csv").open())
    }
    study = meta["series_instance_uid"].map(study_of)
    assert {"abdomen", "chest"} <= set(study) <= {"abdomen", "chest", "head"}  # no scout
    assert meta.loc[study.ne("abdomen"), "lesion"].isna().all()  # no annotation: unknown
    assert meta.loc[study.eq("abdomen"), "lesion"].notna().all()
    rejects = read_table(store, REJECTS).to_pandas()
    assert set(rejects["reason_code"]) == {"non_image", "localizer"}
    assert rejects["reason_code"].eq("non_image").sum() == len(segs)  # listed, not unreadable
