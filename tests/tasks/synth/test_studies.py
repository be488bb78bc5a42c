import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest

from renalflow.tasks.synth import SynthConfig, archive_digest, synthesize_archive
from renalflow.tasks.synth.anatomy import TISSUE_INDEX, build_anatomy, build_trunk
from renalflow.tasks.synth.studies import scan_positions

# Every extra on, tiny images and short series: whole studies in a second or two.
WHOLE = dict(
    matrix=64,
    study_slices=(12, 20),
    chest_share=1.0,
    head_share=1.0,
    scout_share=1.0,
    twin_share=1.0,
)


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole")
    synthesize_archive(out, SynthConfig(patients=3, seed=404, **WHOLE), jobs=1)
    return out


def _headers(out: Path) -> dict[str, list[pydicom.Dataset]]:
    """Every file's header, by SeriesInstanceUID."""
    series = defaultdict(list)
    for path in (out / "archive").rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            series[str(ds.SeriesInstanceUID)].append(ds)
    return series


def _records(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "series.csv").open()))


def test_every_series_is_listed_with_what_it_is(whole: Path):
    headers, records = _headers(whole), _records(whole)
    assert {r["series_instance_uid"] for r in records} == set(headers)
    for r in records:
        files = headers[r["series_instance_uid"]]
        assert len(files) == (1 if r["kind"] != "axial" else int(r["slices"]))
        assert {str(ds.StudyInstanceUID) for ds in files} == {r["study_instance_uid"]}
    kinds = {(r["patient_id"], r["study"], r["kind"]) for r in records}
    for patient in ("RF00001", "RF00002", "RF00003"):  # every extra, at shares of 1
        assert {(s, k) for p, s, k in kinds if p == patient} == {
            ("abdomen", "axial"),
            ("abdomen", "seg"),
            ("abdomen", "localizer"),
            ("chest", "axial"),
            ("head", "axial"),
        }


def test_abdominal_series_span_their_range_with_the_mass_on_a_contiguous_part(whole: Path):
    headers = _headers(whole)
    lesions = {r["SeriesInstanceUID"]: r for r in csv.DictReader((whole / "lesions.csv").open())}
    for r in _records(whole):
        if (r["study"], r["kind"]) != ("abdomen", "axial"):
            continue
        files = sorted(
            headers[r["series_instance_uid"]], key=lambda d: float(d.ImagePositionPatient[2])
        )
        assert 12 <= len(files) <= 20
        assert {ds.BodyPartExamined for ds in files} == {"ABDOMEN"}
        assert {tuple(ds.ImageType) for ds in files} == {("ORIGINAL", "PRIMARY", "AXIAL")}
        z = np.array([float(ds.ImagePositionPatient[2]) for ds in files])
        assert np.allclose(np.diff(z), float(r["slice_thickness"]), atol=1e-3)
        lesion = lesions[r["series_instance_uid"]]
        inside = (z >= float(lesion["z_min"]) - 1e-3) & (z <= float(lesion["z_max"]) + 1e-3)
        assert 0 < inside.sum() == int(r["lesion_slices"]) <= len(files)
        first, last = np.flatnonzero(inside)[[0, -1]]
        assert inside[first : last + 1].all()  # one contiguous run
        assert str(files[first].SOPInstanceUID) == lesion["first_SOPInstanceUID"]
        assert str(files[last].SOPInstanceUID) == lesion["last_SOPInstanceUID"]
        if r["phase"] != "noncontrast":
            assert files[0].ContrastBolusAgent


def test_other_studies_scout_and_twins_carry_their_tags(whole: Path):
    headers = _headers(whole)
    records = _records(whole)
    for r in records:
        ds = headers[r["series_instance_uid"]][0]
        if r["study"] == "chest":
            assert (ds.BodyPartExamined, ds.StudyDescription) == ("CHEST", "CT THORAX")
            assert r["lesion_slices"] == "0" and r["annotated"] == ""
        if r["study"] == "head":
            assert ds.BodyPartExamined == "HEAD" and "ContrastBolusAgent" not in ds
        if r["kind"] == "localizer":
            assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
        if r["kind"] == "seg":
            assert ds.Modality == "SEG" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    twins = [r for r in records if r["twin_of"]]
    assert len(twins) == 6  # one pair per patient
    for r in twins:
        a = headers[r["series_instance_uid"]][0]
        b = headers[r["twin_of"]][0]
        assert a.FrameOfReferenceUID == b.FrameOfReferenceUID
        assert a.AcquisitionNumber == b.AcquisitionNumber
        assert a.SeriesInstanceUID != b.SeriesInstanceUID
        assert {float(a.SliceThickness), float(b.SliceThickness)} & {0.625, 1.0, 1.25}
        assert float(a.SliceThickness) != float(b.SliceThickness)


def test_same_seed_gives_identical_whole_studies(tmp_path: Path):
    config = SynthConfig(patients=2, seed=9, **WHOLE)
    synthesize_archive(tmp_path / "a", config, jobs=1)
    synthesize_archive(tmp_path / "b", config, jobs=2)
    assert archive_digest(tmp_path / "a") == archive_digest(tmp_path / "b")


def test_without_seg_the_lesion_is_in_the_csv_only(tmp_path: Path):
    config = SynthConfig(patients=2, seed=9, seg_share=0.0, **WHOLE)
    report = synthesize_archive(tmp_path, config, jobs=1)
    assert report.seg_objects == 0 and report.lesion_series >= 2
    assert not [r for r in _records(tmp_path) if r["kind"] == "seg"]
    annotated = {r["annotated"] for r in _records(tmp_path) if r["study"] == "abdomen"}
    assert annotated <= {"csv", ""} and "csv" in annotated


def test_the_body_changes_from_liver_dome_to_iliac_crest():
    rng = np.random.default_rng(3)
    anatomy = build_anatomy(rng, 0.75)
    anatomy.trunk = build_trunk(rng, anatomy)

    def has(z: float, tissue: str) -> bool:
        return bool((anatomy.tissue_at(z) == TISSUE_INDEX[tissue]).any())

    dome, crest = anatomy.liver_dome, anatomy.trunk.crest_z
    assert has(dome + 20, "lung") and not has(crest - 10, "lung")
    assert has(dome - 40, "liver") and not has(crest - 10, "liver")
    assert has(crest - 10, "bowel") and not has(dome + 20, "bowel")
    marrow = TISSUE_INDEX["bone_marrow"]
    assert (anatomy.tissue_at(crest - 20) == marrow).sum() > (anatomy.tissue_at(0) == marrow).sum()


def test_a_clipped_scan_range_keeps_the_mass():
    z = scan_positions(150.0, -100.0, 1.0, (10, 40), (-30.0, -10.0))
    assert len(z) == 40 and z == sorted(z, reverse=True)
    assert min(z) <= -30.0 and max(z) >= -10.0
    assert len(scan_positions(150.0, -100.0, 5.0, (40, 150), (-30.0, -10.0))) == 51


def test_curated_archives_stay_512_and_bounds_are_checked():
    with pytest.raises(ValueError, match="512"):
        SynthConfig(lesion_only=True, matrix=64)
    with pytest.raises(ValueError, match="study_slices"):
        SynthConfig(study_slices=(50, 40))
    with pytest.raises(ValueError, match="chest_share"):
        SynthConfig(chest_share=1.5)
