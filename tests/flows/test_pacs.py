"""Ingest from a real PACS (Orthanc from Debian, started on loopback) over DICOMweb and
DIMSE, through the real Prefect engine on a real Dask cluster."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from renalflow.flows.cli import main
from renalflow.flows.ingest import IngestSummary, ingest_flow
from renalflow.tasks.sources import archive_folder, pacs_root, parse_source
from renalflow.tasks.sources.credentials import PASSWORD_ENV, TOKEN_ENV, USER_ENV
from renalflow.tasks.sources.watermark import read_watermark
from renalflow.tasks.store import read_lesions, read_slices
from renalflow.tasks.synth import SynthConfig, synthesize_archive
from tests.orthanc import PASSWORD, USER, Orthanc, start_orthanc

KEPT_FILES = [
    "CT_small.dcm",  # no BodyPartExamined, no telling description: kept
    "693_J2KR.dcm",  # JPEG 2000 lossless
    "explicit_VR-UN.dcm",  # BodyPartExamined PANCREAS, JPEG 2000 lossless
]
LEFT_FILES = ["J2K_pixelrep_mismatch.dcm"]  # BodyPartExamined HEAD: never fetched
UN_FILE = "explicit_VR-UN.dcm"
"""Its SOPClassUID is encoded with VR UN: Orthanc sends it over DICOMweb, but its C-GET
finds no presentation context for it ("No presentation context for: (OT)"), so over
DIMSE its study is listed and not delivered: a real PACS failure to account for."""


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Small whole synthetic studies (abdominal phases, scouts, lesion SEGs, chest CT; three
    transfer syntaxes) and real CT from pydicom."""
    root = tmp_path_factory.mktemp("pacs-archive")
    synth = SynthConfig(patients=3, seed=18, study_slices=(4, 6), matrix=64)
    synthesize_archive(root / "synth", synth)
    folder = root / "synth" / "archive"
    for name in KEPT_FILES + LEFT_FILES:
        shutil.copy(get_testdata_file(name), folder / name)
    return folder


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, archive: Path) -> Iterator[Orthanc]:
    with start_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        server.upload(p for p in sorted(archive.rglob("*")) if p.is_file())
        yield server


@pytest.fixture(scope="module", autouse=True)
def credentials() -> Iterator[None]:
    """Orthanc's user in the environment before the module's Dask workers start: they
    read the credentials from their own environment, as workers elsewhere would."""
    saved = {name: os.environ.pop(name, None) for name in (TOKEN_ENV, USER_ENV, PASSWORD_ENV)}
    os.environ[USER_ENV] = USER
    os.environ[PASSWORD_ENV] = PASSWORD
    yield
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


def _ingest(cluster, archive: str, store: Path, **kwargs) -> IngestSummary:
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(address=cluster.scheduler_address)
    return ingest_flow.with_options(task_runner=runner)(archive=archive, store=str(store), **kwargs)


def _slices(store: Path) -> dict[str, np.ndarray]:
    meta, images = read_slices(str(store))
    return dict(zip(meta["sop_instance_uid"], images, strict=True))


@pytest.fixture(scope="module")
def folder_store(dask_cluster, archive: Path, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("folder") / "store"
    _ingest(dask_cluster, str(archive), store)
    return store


@pytest.fixture(scope="module")
def from_folder(folder_store: Path) -> dict[str, np.ndarray]:
    return _slices(folder_store)


@pytest.fixture(scope="module")
def folder_lesions(folder_store: Path) -> list[tuple[object, ...]]:
    return _lesions(folder_store)


def _lesions(store: Path) -> list[tuple[object, ...]]:
    """The lesion truth, without where its file lay or which run read it."""
    columns = ["study_instance_uid", "series_instance_uid", "sop_instance_uid", "segment"]
    return sorted(read_lesions(str(store))[columns].itertuples(index=False, name=None))


def _not_abdominal(archive: Path) -> set[str]:
    """SOPInstanceUIDs of the synthetic chest and head CT slices."""
    found = set()
    for path in archive.rglob("*"):
        if path.is_file():
            header = pydicom.dcmread(path, stop_before_pixels=True)
            if header.get("BodyPartExamined") in ("CHEST", "HEAD"):
                found.add(str(header.SOPInstanceUID))
    return found


def _uids(*names: str, keyword: str = "SOPInstanceUID") -> set[str]:
    return {str(pydicom.dcmread(get_testdata_file(n))[keyword].value) for n in names}


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_pacs_ingest_gives_the_folders_slices_and_reruns_fetch_nothing(
    protocol, pacs, dask_cluster, archive, from_folder, folder_lesions, tmp_path
):
    uri = pacs.dicomweb if protocol == "dicomweb" else pacs.dimse()
    store = tmp_path / "store"
    first = _ingest(dask_cluster, uri, store)

    fetched = _slices(store)
    left = _uids(*LEFT_FILES) | _not_abdominal(archive)
    assert fetched and not left & set(fetched)  # head and chest CT stayed on the PACS
    expected = set(from_folder) - left
    undelivered = set()
    if protocol == "dimse":
        expected -= _uids(UN_FILE)
        undelivered = _uids(UN_FILE, keyword="StudyInstanceUID")
    assert set(fetched) == expected
    for uid, image in fetched.items():
        np.testing.assert_array_equal(image, from_folder[uid])
    assert first.source is not None
    assert set(first.source.failed) == undelivered
    assert all("status 0xC000" in reason for reason in first.source.failed.values())
    # Head CT is left by its series' body part, scout series (body part ABDOMEN) by their
    # instances' ImageType, chest CT by its study's description.
    skipped = " ".join(first.source.series_skipped)
    assert "only localizers" in skipped and "HEAD" in skipped
    assert first.source.localizers_skipped >= 1
    assert "another region" in " ".join(first.source.studies_skipped)
    assert first.n_rejects == 0
    # The lesion SEGs came too: the same lesion truth as from the folder.
    assert _lesions(store) == folder_lesions and folder_lesions
    # What was fetched lies in the store's cache: the slices' files and the SEGs.
    cache = archive_folder(uri, str(store))
    cached = len(list(Path(cache).rglob("*.dcm")))
    assert first.source.instances_fetched == cached == len(fetched) + first.n_non_image
    assert first.source.cache_files == cached and first.source.cache_bytes > 0

    second = _ingest(dask_cluster, uri, store)
    assert second.source is not None
    assert second.source.instances_fetched == 0
    assert second.source.delivered == 0
    # Asked only from a few days before the newest study, each of them delivered before.
    assert second.source.dates.endswith("-") and second.source.dates != first.source.dates
    assert second.source.already_delivered == second.source.studies_listed >= 1
    # The study not delivered is asked for again, whatever its date, and still recorded.
    assert second.source.retried == len(undelivered)
    assert set(second.source.failed) == undelivered
    assert second.files_new == 0 and second.slices == 0


def test_a_study_added_between_runs_is_the_only_one_fetched(pacs, dask_cluster, tmp_path):
    store = tmp_path / "store"
    first = _ingest(dask_cluster, pacs.dicomweb, store)
    assert first.source is not None and first.source.delivered >= 3
    later = tmp_path / "later"
    synthesize_archive(
        later, SynthConfig(patients=1, seed=1818, max_slices_per_series=2, lesion_only=True)
    )
    new_files = [p for p in (later / "archive").rglob("*") if p.is_file()]
    for path in new_files:  # a study of today, sent to the PACS after the first run
        dataset = pydicom.dcmread(path)
        dataset.StudyDate = date.today().strftime("%Y%m%d")
        dataset.save_as(path)
    pacs.upload(new_files)
    try:
        second = _ingest(dask_cluster, pacs.dicomweb, store)
    finally:
        pacs.delete_study(str(pydicom.dcmread(new_files[0]).StudyInstanceUID))
    assert second.source is not None
    assert second.source.delivered == 1
    assert second.source.instances_fetched == len(new_files) == second.slices
    mark = read_watermark(pacs_root(str(store), parse_source(pacs.dicomweb)))
    assert len(mark.delivered) == first.source.delivered + 1


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_a_crashed_retrieval_resumes_without_fetching_twice(protocol, pacs, dask_cluster, tmp_path):
    """A run killed mid-study leaves whole instances in the cache and no record of the
    study: the rerun fetches only the rest of it, and ingests every instance once."""
    uri = pacs.dicomweb if protocol == "dicomweb" else pacs.dimse()
    store = tmp_path / "store"
    whole = _ingest(dask_cluster, uri, store)
    assert whole.source is not None
    root = Path(pacs_root(str(store), parse_source(uri)))
    # The state a kill leaves: the store as before the run, part of one study cached.
    shutil.rmtree(root / "studies")
    (root / "watermark.json").unlink()
    for table in ("slices", "rejects"):
        shutil.rmtree(store / table)
    cached = sorted((root / "instances").rglob("*.dcm"))
    removed = cached[1::2]
    for path in removed:
        path.unlink()

    resumed = _ingest(dask_cluster, uri, store)
    assert resumed.source is not None
    assert resumed.source.instances_fetched == len(removed)
    assert resumed.source.instances_cached == len(cached) - len(removed)
    assert resumed.slices == whole.slices and resumed.n_rejects == 0


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_a_study_gone_between_query_and_retrieval_is_not_delivered(protocol, pacs, tmp_path):
    """Listed, then deleted before its retrieval: not delivered (so recorded as failed
    and asked for again next run), never delivered with nothing in it."""
    from renalflow.tasks.sources import StudyNotDelivered
    from renalflow.tasks.sources.fetch import fetch_study, open_client
    from renalflow.tasks.sources.query import PacsSettings

    later = tmp_path / "later"
    synthesize_archive(
        later, SynthConfig(patients=1, seed=1819, max_slices_per_series=2, lesion_only=True)
    )
    files = [p for p in (later / "archive").rglob("*") if p.is_file()]
    uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    pacs.upload(files)
    uri = pacs.dicomweb if protocol == "dicomweb" else pacs.dimse()
    source, settings = parse_source(uri), PacsSettings()
    client = open_client(source, settings)
    try:
        (study,) = [s for s in client.find_studies(None) if s.study_instance_uid == uid]
    finally:
        client.close()
    pacs.delete_study(uid)
    with pytest.raises(StudyNotDelivered, match=r"deleted|no longer has it"):
        fetch_study(source, study, str(tmp_path / "store"), settings)


def test_a_pacs_source_with_an_object_storage_store_is_refused_in_one_line(pacs, tmp_path, capsys):
    code = main(["ingest", pacs.dicomweb, "--store", "s3://research/store"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "needs a slice store on a local or mounted disk, not s3://research/store" in err[0]


def test_wrong_password_is_one_line(pacs, prefect_api, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    code = main(["ingest", pacs.dicomweb, "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert "refused the credentials (HTTP 401, user 'renalflow')" in err[0]
    assert "not-the-password" not in err[0]


def test_no_credentials_is_one_line_naming_the_variables(
    pacs, prefect_api, monkeypatch, tmp_path, capsys
):
    for name in (TOKEN_ENV, USER_ENV, PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    code = main(["ingest", pacs.dicomweb, "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"set {TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV}" in err[0]


@pytest.mark.parametrize(
    ("called", "calling", "expected"),
    [
        ("NOT_ORTHANC", "RENALFLOW", "the called AE title 'NOT_ORTHANC' is not the PACS's"),
        ("ORTHANC", "STRANGER", "calling AE title 'STRANGER'"),
    ],
)
def test_wrong_ae_titles_are_one_line(
    called, calling, expected, pacs, prefect_api, tmp_path, capsys
):
    store = str(tmp_path / "store")
    code = main(["ingest", pacs.dimse(called), "--store", store, "--calling-ae", calling])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert expected in err[0]


def test_credentials_never_travel_in_the_uri(tmp_path, capsys):
    code = main(["ingest", "dicomweb+https://user:secret@pacs.example/dicom-web", "--store", "s"])
    err = capsys.readouterr().err
    assert code == 2 and "do not put credentials in the archive URI" in err
    assert "secret" not in err


@pytest.fixture(scope="module")
def model(dask_cluster, tmp_path_factory) -> Path:
    """A one-epoch cpu-demo model, trained on a small curated synthetic archive."""
    from renalflow.tasks.config import PreprocessConfig
    from renalflow.tasks.model import profile_config
    from renalflow.tasks.split import SplitConfig
    from renalflow.tasks.train import train_model

    root = tmp_path_factory.mktemp("model")
    training = root / "training"
    synth = SynthConfig(
        patients=6, seed=31, benign_fraction=0.5, max_slices_per_series=4, lesion_only=True
    )
    synthesize_archive(training, synth)
    store = root / "training-store"
    _ingest(
        dask_cluster,
        str(training / "archive"),
        store,
        labels=str(training / "labels.csv"),
        preprocess=PreprocessConfig(output_size=64),
    )
    config = profile_config("cpu-demo", input_size=64, epochs=1)
    train_model(str(store), root / "model", config, SplitConfig(seed=1))
    return root / "model"


@pytest.fixture
def pseudonym_key(monkeypatch) -> None:
    from renalflow.tasks.pseudonym import KEY_ENV

    monkeypatch.setenv(KEY_ENV, "renalflow-test-key-0123456789abcdef")


def _score(cluster, archive: str, model: Path, out: Path, **kwargs: Any) -> Any:
    from prefect_dask import DaskTaskRunner

    from renalflow.flows.score import score_flow
    from renalflow.tasks.score import ScoreConfig

    return score_flow.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))(
        archive=archive,
        model_dir=str(model),
        results=str(out / "results"),
        store=str(out / "store"),
        config=ScoreConfig(all_slices=True),
        **kwargs,
    )


@pytest.mark.slow
def test_scoring_a_pacs_votes_as_scoring_the_folder(
    pacs, dask_cluster, archive, model, pseudonym_key, tmp_path
):
    """score takes a PACS like a folder: for the studies it fetched, the same status and
    images, scored alike (the votes themselves are not compared: a one-epoch model puts
    images near 0.5, where float round-off between inference batches can tip one)."""
    from renalflow.tasks.query import run_query

    def votes(source: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        _score(dask_cluster, source, model, tmp_path / name)
        results = str(tmp_path / name / "results")
        studies = "select study_key, status, n_images, slices_in_study from study_votes"
        images = "select image_key, study_key, probability from slice_scores"
        return (
            {r["study_key"]: r for r in run_query(results, studies).to_pylist()},
            {r["image_key"]: r for r in run_query(results, images).to_pylist()},
        )

    pacs_studies, pacs_images = votes(pacs.dicomweb, "pacs")
    folder_studies, folder_images = votes(str(archive), "folder")
    assert pacs_studies and all(folder_studies[k] == row for k, row in pacs_studies.items())
    # What the PACS query left there (the chest CT studies) had no mass to vote on anyway.
    left = [row for key, row in folder_studies.items() if key not in pacs_studies]
    assert left and all(row["status"] == "no_mass_found" for row in left)
    # The same images, scored alike (inference batches differ: float round-off only).
    assert pacs_images.keys() == folder_images.keys()
    for key, row in pacs_images.items():
        assert row["study_key"] == folder_images[key]["study_key"]
        assert row["probability"] == pytest.approx(folder_images[key]["probability"], abs=1e-4)


def _text_items(sr: Any) -> dict[str, str]:
    return {
        str(item.ConceptNameCodeSequence[0].CodeMeaning): str(item.TextValue)
        for item in sr.ContentSequence
        if item.ValueType == "TEXT"
    }


def _numbers(sr: Any) -> dict[str, float]:
    return {
        str(item.ConceptNameCodeSequence[0].CodeMeaning): float(
            item.MeasuredValueSequence[0].NumericValue
        )
        for item in sr.ContentSequence
        if item.ValueType == "NUM"
    }


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_results_go_back_to_the_pacs_as_a_valid_sr_once(
    protocol, pacs, dask_cluster, model, pseudonym_key, tmp_path
):
    """--report-to-pacs: one Enhanced SR per study scored, sent by STOW-RS or C-STORE,
    visible through QIDO-RS, valid (highdicom round trip; dciodvfy when installed), saying
    what the vote row says; a rerun sends nothing, and a rerun after a crash between
    sending and recording sends the same instance again, which the PACS keeps once."""
    import subprocess

    from dicomweb_client.api import DICOMwebClient
    from highdicom.sr import EnhancedSR

    from renalflow.tasks.pseudonym import KEY_ENV, pseudonym
    from renalflow.tasks.query import run_query
    from renalflow.tasks.sources.report import DISCLAIMER, SERIES_DESCRIPTION, sent_reports

    uri = pacs.dicomweb if protocol == "dicomweb" else pacs.dimse()
    pacs.delete_modality("SR")
    try:
        first = _score(dask_cluster, uri, model, tmp_path, report_to_pacs=True)
        assert first.vote_rows_inserted >= 3
        assert first.reports_sent == first.vote_rows_inserted and not first.reports_not_sent
        found = pacs.qido("series", Modality="SR")
        assert len(found) == first.vote_rows_inserted
        rows = {
            r["study_key"]: r
            for r in run_query(str(tmp_path / "results"), "select * from study_votes").to_pylist()
        }
        key = os.environ[KEY_ENV].encode()
        client = DICOMwebClient(f"{pacs.rest}/dicom-web")
        client._session.auth = (USER, PASSWORD)
        for series in found:
            study = series["0020000D"]["Value"][0]
            series_uid = series["0020000E"]["Value"][0]
            assert series["0008103E"]["Value"][0] == SERIES_DESCRIPTION
            (instance,) = client.search_for_instances(study, series_uid)
            sop = instance["00080018"]["Value"][0]
            dataset = client.retrieve_instance(study, series_uid, sop)
            sr = EnhancedSR.from_dataset(dataset)  # a valid Enhanced SR, read back
            assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"
            assert "not a diagnosis" in sr.ConceptNameCodeSequence[0].CodeMeaning
            row = rows[pseudonym(key, study)]
            texts, numbers = _text_items(sr), _numbers(sr)
            assert texts["Comment"] == DISCLAIMER
            assert texts["Algorithm Version"] == f"model {row['model_version']}"
            assert f"Screening vote: {row['vote']} " in texts["Finding"]
            assert numbers["Share of voted slices malignant"] == pytest.approx(
                100 * row["fraction_malignant"], abs=0.01
            )
            assert numbers["Malignant share for a malignant vote"] == pytest.approx(51)
            assert numbers["Slices voted on"] == row["n_images"]
            images = [i for i in sr.ContentSequence if i.ValueType == "IMAGE"]
            assert len(images) == row["n_images"]
            evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
            assert evidence.StudyInstanceUID == study
            if shutil.which("dciodvfy"):  # dicom3tools (`make pacs` installs it)
                path = tmp_path / f"{sop}.dcm"
                dataset.save_as(path, enforce_file_format=True)
                checked = subprocess.run(
                    ["dciodvfy", str(path)], capture_output=True, text=True, check=False
                )
                errors = [line for line in checked.stderr.splitlines() if line.startswith("Error")]
                assert not errors, checked.stderr

        second = _score(dask_cluster, uri, model, tmp_path, report_to_pacs=True)
        assert second.studies_scored == 0 and second.reports_sent == 0
        assert len(pacs.qido("series", Modality="SR")) == len(found)

        # Killed after the PACS took one SR and before it was recorded: sent again, the
        # same instance (its UIDs follow from its content), which the PACS keeps once.
        root = pacs_root(str(tmp_path / "store"), parse_source(uri))
        sent = sent_reports(root)
        assert len(sent) == len(found)
        Path(root, "reports", f"{next(iter(sent))}.sent.json").unlink()
        third = _score(dask_cluster, uri, model, tmp_path, report_to_pacs=True)
        assert third.reports_sent == 1
        assert len(pacs.qido("instances", Modality="SR")) == len(found)
    finally:
        pacs.delete_modality("SR")


@pytest.mark.slow
def test_a_pruned_cache_keeps_the_store_and_what_the_srs_cite(
    pacs, dask_cluster, model, pseudonym_key, tmp_path
):
    """--prune-cache: after ingest, the delivered studies' instances give way to their
    headers; the store keeps every slice, SRs are still built from the kept headers and
    sent, the summary says what was freed, and a rerun fetches and prunes nothing."""
    from renalflow.tasks.score import format_summary
    from renalflow.tasks.sources.query import PacsSettings

    uri = pacs.dicomweb
    settings = PacsSettings(prune_cache=True)
    pacs.delete_modality("SR")
    try:
        first = _score(dask_cluster, uri, model, tmp_path, report_to_pacs=True, pacs=settings)
        source = first.source
        assert source.delivered > 0 and 0 < source.studies_pruned <= source.delivered
        assert source.cache_files == 0 and source.files_kept == 0 and source.bytes_pruned > 0
        root = pacs_root(str(tmp_path / "store"), parse_source(uri))
        headers = sorted(Path(root, "evidence").rglob("*.dcm"))
        assert len(headers) == source.instances_fetched
        assert not any("PixelData" in pydicom.dcmread(h) for h in headers)
        stored = len(_slices(tmp_path / "store"))
        assert stored >= first.images_scored > 0
        assert first.reports_sent == first.vote_rows_inserted > 0
        assert len(pacs.qido("series", Modality="SR")) == first.reports_sent
        assert "pruned now" in format_summary(first)

        second = _score(dask_cluster, uri, model, tmp_path, report_to_pacs=True, pacs=settings)
        assert second.source.delivered == 0 and second.source.studies_pruned == 0
        assert second.studies_scored == 0 and second.reports_sent == 0
        assert len(_slices(tmp_path / "store")) == stored
    finally:
        pacs.delete_modality("SR")


def test_report_to_pacs_needs_a_pacs_archive(tmp_path, capsys):
    code = main(["score", str(tmp_path), "--model-dir", "m", "--results", "r", "--report-to-pacs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--report-to-pacs writes results back to a PACS" in err[0]
