"""The web page's scoring: the same vote and deciding slices as scoring and evaluation,
a verdict for every uploaded file, uploads that never choose where they land."""

from __future__ import annotations

import io
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest

from renalflow.flows.web import WebConfig, create_app, save_uploads, score_upload
from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.errors import InputError
from renalflow.tasks.model import profile_config
from renalflow.tasks.score import ScoreConfig
from renalflow.tasks.store import check_manifest
from renalflow.tasks.train import train_model
from renalflow.tasks.vote import deciding_slices, vote
from tests.factory import build_store


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, dict[str, list[Path]]]:
    """A tiny cpu-demo model and the archive's files by PatientID."""
    root = tmp_path_factory.mktemp("web")
    store = build_store(root, patients=6, seed=11)
    preprocess = PreprocessConfig(output_size=64)  # build_store's; the model reads it back
    check_manifest(store, preprocess.to_dict(), preprocess.version)
    config = profile_config("cpu-demo", input_size=64, epochs=1, augment=False)
    train_model(store, root / "model", config, log=lambda _: None)
    by_patient: dict[str, list[Path]] = defaultdict(list)
    for path in sorted((root / "synth" / "archive").rglob("*.dcm")):
        by_patient[str(pydicom.dcmread(path, stop_before_pixels=True).PatientID)].append(path)
    return root / "model", dict(by_patient)


def _upload(files: list[Path], folder: Path, config: WebConfig) -> list[Path]:
    folder.mkdir()
    return save_uploads([(f.name, f.read_bytes()) for f in files], folder, config)


def test_upload_gets_the_one_vote_and_its_deciding_slices(model, tmp_path):
    model_dir, by_patient = model
    config = WebConfig(str(model_dir), str(tmp_path), score=ScoreConfig(explain_per_side=2))
    files = next(iter(by_patient.values()))
    paths = _upload(files, tmp_path / "up", config)
    junk = tmp_path / "up" / "99999-notes.txt"
    junk.write_bytes(b"not a DICOM file at all")
    result = score_upload([*paths, junk], config)

    probabilities = np.array([s["probability"] for s in result["slices"]])
    outcome = vote(probabilities, config.score.image_threshold, config.score.vote_threshold)
    assert result["vote"] == outcome.vote.value
    assert result["n_malignant"] == outcome.n_malignant and result["n_images"] == len(files)
    picks = deciding_slices(probabilities, outcome.vote, 2, config.score.image_threshold)
    assert [h["probability"] for h in result["heatmaps"]] == pytest.approx(
        probabilities[picks].tolist()
    )
    assert all(h["png"].startswith("data:image/png;base64,") for h in result["heatmaps"])
    assert [r["file"] for r in result["rejects"]] == ["notes.txt"]
    assert result["rejects"][0]["code"] == "not_dicom"


def test_upload_of_two_patients_is_refused(model, tmp_path):
    model_dir, by_patient = model
    config = WebConfig(str(model_dir), str(tmp_path))
    first, second = list(by_patient.values())[:2]
    paths = _upload([first[0], second[0]], tmp_path / "up", config)
    with pytest.raises(InputError, match="one patient at a time"):
        score_upload(paths, config)


def test_zip_members_never_leave_the_upload_folder(model, tmp_path):
    model_dir, _ = model
    config = WebConfig(str(model_dir), str(tmp_path))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../escape.dcm", b"x")
        archive.writestr("series/a.dcm", b"y")
    folder = tmp_path / "up"
    paths = _upload([], folder, config) + save_uploads(
        [("series.zip", buffer.getvalue())], folder, config
    )
    assert [p.parent for p in paths] == [folder, folder]
    assert not (tmp_path / "escape.dcm").exists()


def test_page_and_api_answer_through_fastapi(model, tmp_path):
    TestClient = pytest.importorskip("fastapi.testclient").TestClient  # the web extra

    model_dir, by_patient = model
    client = TestClient(create_app(WebConfig(str(model_dir), str(tmp_path / "work"))))
    page = client.get("/")
    assert page.status_code == 200 and "cpu-demo model" in page.text
    files = next(iter(by_patient.values()))
    answer = client.post("/api/score", files=[("files", (f.name, f.read_bytes())) for f in files])
    assert answer.status_code == 200 and answer.json()["vote"] in ("benign", "malignant")
    refused = client.post("/api/score", files=[("files", ("a.txt", b"nothing"))])
    assert refused.status_code == 422 and "usable axial CT" in refused.json()["error"]
