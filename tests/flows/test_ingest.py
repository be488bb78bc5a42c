"""The ingest flow through the real Prefect engine on a real Dask cluster."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless, RLELossless

from renalflow.flows.ingest import IngestSummary, format_summary, ingest_flow
from renalflow.tasks.store import REJECTS, SLICES, list_parts, read_table
from tests.factory import CORONAL, curated_archive, make_ct, save, save_without_meta, start_cli

REAL_FILES = [
    "CT_small.dcm",  # real CT, explicit VR little endian
    "693_J2KR.dcm",  # real CT, JPEG 2000 lossless
    "MR_small.dcm",  # other modality
    "MR_truncated.dcm",  # truncated
    "rtplan.dcm",  # no image at all
    "eCT_Supplemental.dcm",  # enhanced multi-frame CT
    "SC_rgb.dcm",  # colour secondary capture
    "JPEG2000.dcm",  # compressed, other modality
]


def _run(cluster, archive: Path, store: Path, **kwargs) -> IngestSummary:
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(address=cluster.scheduler_address)
    return ingest_flow.with_options(task_runner=runner)(
        archive=str(archive), store=str(store), **kwargs
    )


def _accounted(store: Path) -> Counter[str]:
    slices = read_table(str(store), SLICES, ["source_uri"]).column("source_uri").to_pylist()
    rejects = read_table(str(store), REJECTS, ["source_uri"]).column("source_uri").to_pylist()
    return Counter(slices + rejects)


def _files(archive: Path) -> set[str]:
    return {p.resolve().as_uri() for p in archive.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def mixed_archive(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """Synthetic patients mixed with real and odd DICOM from other sources."""
    root = tmp_path_factory.mktemp("mixed")
    archive = curated_archive(root / "synth", patients=3, seed=3, slices=4)
    extra = archive / "zz_other_sources"
    extra.mkdir()
    for name in REAL_FILES:
        shutil.copy(get_testdata_file(name), extra / name)
    expected: dict[str, str] = {}
    (extra / "worklist.txt").write_text("not an image\n" * 50)
    expected["worklist.txt"] = "not_dicom"
    (extra / "empty").write_bytes(b"")
    expected["empty"] = "not_dicom"
    save(make_ct(orientation=CORONAL, PatientID="REF1"), extra / "coronal.dcm")
    expected["coronal.dcm"] = "not_axial"
    save(make_ct(PhotometricInterpretation="MONOCHROME1", PatientID="MONO1"), extra / "mono1.dcm")
    expected["mono1.dcm"] = "slice"
    save_without_meta(make_ct(PatientID="BARE1"), extra / "bare_dataset")
    expected["bare_dataset"] = "slice"
    save(make_ct(intercept=None, slope=None), extra / "no_rescale.dcm")
    expected["no_rescale.dcm"] = "no_rescale"
    expected.update(
        {
            "CT_small.dcm": "slice",
            "693_J2KR.dcm": "slice",
            "MR_small.dcm": "not_ct",
            "MR_truncated.dcm": "truncated",
            "rtplan.dcm": "non_image",
            "eCT_Supplemental.dcm": "multiframe",
            "SC_rgb.dcm": "not_ct",
            "JPEG2000.dcm": "not_ct",
        }
    )
    synthetic = sorted(p for p in archive.rglob("*") if p.is_file() and extra not in p.parents)
    # The same image twice: an exact copy, and the same SOP re-encoded losslessly.
    shutil.copy(synthetic[0], extra / "copy_of_first.dcm")
    expected["copy_of_first.dcm"] = "duplicate"
    ds = pydicom.dcmread(synthetic[1])
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(extra / "reencoded_second.dcm", enforce_file_format=True)
    expected["reencoded_second.dcm"] = "duplicate"
    # A damaged copy that sorts first ("00_") must not take the good copy down with it.
    ds = pydicom.dcmread(synthetic[2])
    good = ds.pixel_array
    ds.compress(JPEG2000Lossless, good, generate_instance_uid=False)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 4]])
    (archive / "00_damaged").mkdir()
    ds.save_as(archive / "00_damaged" / "broken_copy.dcm", enforce_file_format=True)
    expected["broken_copy.dcm"] = "decode"
    # Truncated copy of another synthetic slice (different SOP so it is its own file).
    cut = make_ct(PatientID="CUT1")
    data = save(cut, extra / "cut_whole.dcm").read_bytes()
    (extra / "cut_whole.dcm").write_bytes(data[: len(data) - 200])
    expected["cut_whole.dcm"] = "truncated"
    return archive, root / "synth" / "labels.csv", expected


@pytest.fixture(scope="module")
def ingested(dask_cluster, mixed_archive, tmp_path_factory):
    archive, labels, expected = mixed_archive
    store = tmp_path_factory.mktemp("store")
    summary = _run(dask_cluster, archive, store, labels=str(labels), batch_size=8)
    return archive, store, summary, expected


def test_every_file_is_accounted_for_exactly_once(ingested):
    archive, store, summary, _ = ingested
    counts = _accounted(store)
    assert set(counts) == _files(archive)
    assert max(counts.values()) == 1
    accounted = summary.slices + summary.n_rejects + summary.n_non_image
    assert summary.files_found == len(counts) == accounted


def test_odd_files_get_readable_reasons(ingested):
    _, store, _, expected = ingested
    slices = read_table(str(store), SLICES, ["source_uri"]).column("source_uri").to_pylist()
    rejects = read_table(str(store), REJECTS).to_pylist()
    by_name = {Path(r["source_uri"]).name: r for r in rejects}
    stored = {Path(u).name for u in slices}
    for name, outcome in expected.items():
        if outcome == "slice":
            assert name in stored, name
        elif outcome == "decode":
            assert by_name[name]["reason_code"] in ("decode_error", "truncated"), by_name[name]
            assert "JPEG 2000" in by_name[name]["reason"]
        elif outcome == "duplicate":
            # Whichever copy is committed first is kept; the other becomes the duplicate.
            assert name in stored or by_name[name]["reason_code"] == "duplicate", name
        else:
            assert by_name[name]["reason_code"] == outcome, (name, by_name[name])
    assert by_name["MR_small.dcm"]["reason"] == "modality MR, not CT"
    duplicates = [r for r in rejects if r["reason_code"] == "duplicate"]
    assert len(duplicates) == 2
    assert all(r["reason"].startswith("duplicate of SOPInstanceUID ") for r in duplicates)


def test_damaged_duplicate_does_not_take_the_good_copy_down(ingested, mixed_archive):
    archive, store, _, _ = ingested
    table = read_table(str(store), SLICES, ["source_uri", "sop_instance_uid"])
    sops = table.column("sop_instance_uid").to_pylist()
    assert len(sops) == len(set(sops))  # one row per image
    broken = pydicom.dcmread(archive / "00_damaged" / "broken_copy.dcm", stop_before_pixels=True)
    assert str(broken.SOPInstanceUID) in sops


def test_slices_carry_labels_phase_and_lineage(ingested):
    _, store, summary, _ = ingested
    table = read_table(str(store), SLICES)
    rows = table.to_pylist()
    synthetic = [r for r in rows if r["patient_id"].startswith("RF")]
    assert synthetic and all(r["label"] in ("benign", "malignant") for r in synthetic)
    assert all(r["label"] is None for r in rows if not r["patient_id"].startswith("RF"))
    assert all(len(r["pixels"]) == r["height"] * r["width"] == 224 * 224 for r in rows)
    assert {r["preprocess_version"] for r in rows} == {summary.preprocess_version}
    assert {r["ingest_run_id"] for r in rows} == {summary.run_id}
    assert {r["phase"] for r in synthetic} <= {"noncontrast", "arterial", "venous", "unknown"}
    assert pc.min(table.column("window_width")).as_py() == 400


def test_work_ran_on_the_dask_workers_not_in_the_flow_process(ingested):
    _, _, summary, _ = ingested
    pids = {int(w.rsplit(":", 1)[1]) for w in summary.worker_slices}
    assert os.getpid() not in pids
    assert summary.convert_tasks >= 2
    text = format_summary(summary)
    assert "slices written" in text and "not_ct" in text


def test_rerun_adds_nothing_and_decodes_nothing(dask_cluster, ingested):
    archive, store, _, _ = ingested
    before = (list_parts(str(store), SLICES), list_parts(str(store), REJECTS))
    again = _run(dask_cluster, archive, store)
    assert again.files_new == 0 and again.slices == 0 and again.n_rejects == 0
    assert (list_parts(str(store), SLICES), list_parts(str(store), REJECTS)) == before


def test_new_files_are_the_only_work_of_a_rerun(dask_cluster, tmp_path):
    archive = curated_archive(tmp_path / "a", patients=2, seed=21, slices=3)
    store = tmp_path / "store"
    first = _run(dask_cluster, archive, store)
    # The archive grows: new patients arrive in new folders.
    new = curated_archive(tmp_path / "b", patients=3, seed=22, slices=3, patient_prefix="NEW")
    added = [p for p in new.rglob("*") if p.is_file()]
    shutil.copytree(new, archive / "night2")
    second = _run(dask_cluster, archive, store)
    assert second.files_already_stored == first.files_found
    assert second.files_new == len(added) == second.slices
    counts = _accounted(store)
    assert set(counts) == _files(archive) and max(counts.values()) == 1


def test_killed_run_then_rerun_leaves_one_row_per_slice(dask_cluster, tmp_path):
    archive = curated_archive(tmp_path / "k", patients=6, seed=31, slices=8, jobs=2)
    store = tmp_path / "store"
    files = _files(archive)
    args = ["ingest", str(archive), "--store", str(store), "--workers", "2"]
    args += ["--slices-per-task", "4"]
    proc = start_cli(
        *args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(list_parts(str(store), SLICES)) < 2:
        assert proc.poll() is None, "ingest finished before it could be interrupted"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the flow process and its Dask workers
    proc.wait(timeout=30)
    partial = _accounted(store)
    assert 0 < sum(partial.values()) < len(files), "the kill should land half-way"
    summary = _run(dask_cluster, archive, store)
    assert summary.files_already_stored == sum(partial.values())
    counts = _accounted(store)
    assert set(counts) == files and max(counts.values()) == 1
    sops = read_table(str(store), SLICES, ["sop_instance_uid"]).column("sop_instance_uid")
    assert len(set(sops.to_pylist())) == len(sops) == len(files)
