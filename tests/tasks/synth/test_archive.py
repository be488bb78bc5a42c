import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from renalflow.tasks.synth import SynthConfig, archive_digest, plan_patients, synthesize_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    config = SynthConfig(patients=6, seed=11, max_slices_per_series=6, lesion_only=True)
    synthesize_archive(out, config, jobs=1)
    return out


def test_archive_has_labels_and_nested_dicom(archive: Path):
    rows = list(csv.DictReader((archive / "labels.csv").open()))
    assert [r["patient_id"] for r in rows] == [f"RF{i:05d}" for i in range(1, 7)]
    assert {r["label"] for r in rows} == {"benign", "malignant"}
    files = [p for p in (archive / "archive").rglob("*") if p.is_file()]
    assert files and all(len(p.relative_to(archive / "archive").parts) == 3 for p in files)


def test_files_carry_realistic_ct_tags(archive: Path):
    files = [p for p in (archive / "archive").rglob("*") if p.is_file()]
    syntaxes = set()
    for path in files:
        ds = pydicom.dcmread(path)
        syntaxes.add(ds.file_meta.TransferSyntaxUID.name)
        assert ds.Modality == "CT" and ds.KVP == 120
        assert 1.5 <= float(ds.SliceThickness) <= 5.0
        assert (ds.Rows, ds.Columns, ds.BitsStored) == (512, 512, 12)
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert "RescaleIntercept" in ds and "PatientBirthDate" in ds
        if "PORTAL" in ds.SeriesDescription.upper() or "ARTERIAL" in ds.SeriesDescription.upper():
            assert ds.ContrastBolusAgent
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert -1100 < np.median(hu) < 100  # body in air, HU scale
    assert len(syntaxes) >= 2


def test_same_seed_gives_identical_bytes(tmp_path: Path):
    config = SynthConfig(patients=2, seed=5, max_slices_per_series=4, lesion_only=True)
    synthesize_archive(tmp_path / "a", config, jobs=1)
    synthesize_archive(tmp_path / "b", config, jobs=2)
    other = SynthConfig(patients=2, seed=6, max_slices_per_series=4, lesion_only=True)
    synthesize_archive(tmp_path / "c", other, jobs=1)
    assert archive_digest(tmp_path / "a") == archive_digest(tmp_path / "b")
    assert archive_digest(tmp_path / "a") != archive_digest(tmp_path / "c")


# The digest of a curated archive as renalflow wrote it before whole studies existed
# (commit e562512): --lesion-only must keep writing these very bytes.
CURATED_SEED_5 = "712728a7f39a89c32f6147014564287de2f2050be0085c149e0e8a4e16634df6"


def test_lesion_only_writes_the_curated_archive_byte_for_byte(tmp_path: Path):
    config = SynthConfig(patients=3, seed=5, max_slices_per_series=4, lesion_only=True)
    synthesize_archive(tmp_path, config, jobs=1)
    assert archive_digest(tmp_path / "archive") == CURATED_SEED_5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "labels.csv"]


def test_benign_share_follows_the_papers_cohort():
    plans = plan_patients(SynthConfig(patients=369, seed=0))
    assert sum(p.label == "benign" for p in plans) == 70  # round(369 * 0.19)
    assert {p.histology for p in plans if p.label == "benign"} == {"oncocytoma"}
    small = plan_patients(SynthConfig(patients=3, seed=0))
    assert {p.label for p in small} == {"benign", "malignant"}


def test_unknown_transfer_syntax_is_refused():
    with pytest.raises(ValueError, match="not one the generator writes"):
        SynthConfig(syntaxes={"1.2.840.10008.1.2.4.50": 1.0})


def test_a_script_read_from_stdin_writes_with_several_processes(tmp_path: Path):
    """`python -` (and notebook kernels) run a __main__ with no file: the writer
    processes must still start, and write what one process writes."""
    import subprocess
    import sys

    script = (
        "from renalflow.tasks.synth import SynthConfig, synthesize_archive\n"
        "config = SynthConfig(patients=2, seed=1, lesion_only=True)\n"
        f"synthesize_archive({str(tmp_path / 'many')!r}, config, jobs=2)\n"
    )
    done = subprocess.run(
        [sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    synthesize_archive(tmp_path / "one", SynthConfig(patients=2, seed=1, lesion_only=True), jobs=1)
    assert archive_digest(tmp_path / "many" / "archive") == archive_digest(
        tmp_path / "one" / "archive"
    )
