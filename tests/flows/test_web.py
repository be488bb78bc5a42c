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

from renalflow.flows.web import create_app
from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.errors import InputError
from renalflow.tasks.model import profile_config
from renalflow.tasks.score import ScoreConfig
from renalflow.tasks.store import check_manifest
from renalflow.tasks.train import train_model
from renalflow.tasks.upload import UnsafeUpload, take_upload
from renalflow.tasks.vote import deciding_slices, vote
from renalflow.tasks.web import WebConfig, score_upload
from tests.factory import build_store

CURATED = ScoreConfig(all_slices=True)  # the synthetic archive: curated slices through the mass
CURATED_TWO_PER_SIDE = ScoreConfig(all_slices=True, explain_per_side=2)


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
    return take_upload([(f.name, io.BytesIO(f.read_bytes())) for f in files], folder, config.limits)


def test_upload_gets_the_one_vote_and_its_deciding_slices(model, tmp_path):
    model_dir, by_patient = model
    config = WebConfig(str(model_dir), str(tmp_path), score=CURATED_TWO_PER_SIDE)
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


def test_a_zip_member_that_would_leave_the_upload_folder_is_refused(model, tmp_path):
    model_dir, _ = model
    config = WebConfig(str(model_dir), str(tmp_path))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("series/a.dcm", b"y")
        archive.writestr("../../escape.dcm", b"x")
    buffer.seek(0)
    folder = tmp_path / "up"
    folder.mkdir()
    with pytest.raises(UnsafeUpload, match="points outside the upload"):
        take_upload([("series.zip", buffer)], folder, config.limits)
    assert not (tmp_path / "escape.dcm").exists()


def test_page_and_api_answer_through_fastapi(model, tmp_path):
    TestClient = pytest.importorskip("fastapi.testclient").TestClient  # the web extra

    model_dir, by_patient = model
    config = WebConfig(
        str(model_dir), str(tmp_path / "work"), allowed_hosts=("testserver",), score=CURATED
    )
    client = TestClient(create_app(config))
    page = client.get("/")
    assert page.status_code == 200 and "cpu-demo model" in page.text
    files = next(iter(by_patient.values()))
    answer = client.post("/api/score", files=[("files", (f.name, f.read_bytes())) for f in files])
    assert answer.status_code == 200 and answer.json()["vote"] in ("benign", "malignant")
    refused = client.post("/api/score", files=[("files", ("a.txt", b"nothing"))])
    assert refused.status_code == 422 and "usable axial CT" in refused.json()["error"]


# The real server, over HTTP, as a browser or an attacker on the network talks to it.


def _serve(model_dir: Path, tmp_path: Path, *extra: str, env: dict[str, str] | None = None):
    import os
    import subprocess
    import sys
    import time

    import httpx

    from tests.factory import free_port

    port = free_port()
    command = [sys.executable, "-m", "renalflow.flows.cli", "web", "--model-dir", str(model_dir)]
    command += ["--out", str(tmp_path / "work"), "--port", str(port), "--all-slices", *extra]
    server = subprocess.Popen(
        command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stdout.read() if server.stdout else ""
        try:
            httpx.get(url + "/", timeout=2)
            return server, url
        except httpx.TransportError:
            time.sleep(0.3)
    server.kill()
    raise AssertionError("renalflow web did not start")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_the_real_server_bounds_uploads_and_checks_who_asks(model, tmp_path):
    import socket
    import time

    import httpx

    model_dir, by_patient = model
    server, url = _serve(model_dir, tmp_path, "--max-upload-mb", "20")
    try:
        files = next(iter(by_patient.values()))
        scored = httpx.post(
            url + "/api/score",
            files=[("files", (f.name, f.read_bytes())) for f in files],
            timeout=120,
        )
        assert scored.status_code == 200, scored.text
        before = _peak_rss_mb(server.pid)

        # 300 MB streamed (chunked, no declared length) against a 20 MB limit: refused
        # once 20 MB have arrived, the rest never read, the server's memory unmoved.
        sent = 0

        def body():
            nonlocal sent
            boundary = b"--b\r\nContent-Disposition: form-data; name=files; filename=x.dcm\r\n\r\n"
            yield boundary
            for _ in range(300):
                sent += 2**20
                yield bytes(2**20)

        started = time.monotonic()
        try:
            big = httpx.post(
                url + "/api/score", content=body(), timeout=60,
                headers={"content-type": "multipart/form-data; boundary=b"},
            )  # fmt: skip
            status = big.status_code
        except httpx.TransportError:  # the server may close while the client still sends
            status = 413
        took = time.monotonic() - started
        assert status == 413
        grown = _peak_rss_mb(server.pid) - before
        assert grown < 64, f"peak RSS grew {grown:.0f} MB"
        print(f"300 MB streamed at a 20 MB limit: 413 after {took:.1f} s, peak RSS +{grown:.0f} MB")

        # A declared 2 GiB body is refused before a byte of it is read.
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as raw:
            raw.sendall(
                b"POST /api/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2147483648\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
            )
            assert raw.recv(200).startswith(b"HTTP/1.1 413")

        # A zip bomb is refused by what it inflates to.
        bomb = io.BytesIO()
        with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("slice.dcm", bytes(200 * 2**20))
        refused = httpx.post(
            url + "/api/score", files=[("files", ("series.zip", bomb.getvalue()))], timeout=60
        )
        assert refused.status_code == 400 and "compression bomb" in refused.json()["error"]
        corrupt = httpx.post(
            url + "/api/score", files=[("files", ("series.zip", b"PK\x03\x04broken"))], timeout=60
        )
        assert corrupt.status_code == 400 and "not a readable zip" in corrupt.json()["error"]

        # Another Host (DNS rebinding) and another origin (a page elsewhere posting here).
        assert httpx.get(url + "/", headers={"host": "evil.example"}).status_code == 400
        forged = httpx.post(
            url + "/api/score", files=[("files", ("a.dcm", b"x"))],
            headers={"origin": "http://evil.example"},
        )  # fmt: skip
        assert forged.status_code == 403
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.slow
def test_off_loopback_the_page_needs_a_token_and_checks_it(model, tmp_path):
    import os
    import subprocess
    import sys
    import time

    import httpx

    model_dir, _ = model
    refused = subprocess.run(
        [sys.executable, "-m", "renalflow.flows.cli", "web", "--model-dir", str(model_dir),
         "--host", "0.0.0.0", "--out", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "RENALFLOW_WEB_TOKEN"},
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "renalflow web: error: --host 0.0.0.0 puts the page on the network: give it a token "
        "with --token-file FILE or RENALFLOW_WEB_TOKEN (every request must then carry it), "
        "or keep the default 127.0.0.1"
    ]
    token = "a-token-of-the-department-0123456789"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    server, url = _serve(model_dir, tmp_path, "--token-file", str(token_file),
                         "--max-concurrent", "1")  # fmt: skip
    try:
        assert httpx.get(url + "/").status_code == 401
        assert httpx.get(url + "/?token=wrong").status_code == 401
        opened = httpx.get(url + f"/?token={token}")
        assert opened.status_code == 303 and "HttpOnly" in opened.headers["set-cookie"]
        with httpx.Client(base_url=url, cookies=opened.cookies) as browser:
            assert browser.get("/").status_code == 200
        bearer = {"authorization": f"Bearer {token}"}
        assert httpx.get(url + "/", headers=bearer).status_code == 200

        # One upload at a time: while one is being received, the next is told to retry.
        import threading

        release, sending = threading.Event(), threading.Event()
        first: dict[str, int] = {}

        def slow_body():
            sending.set()  # its headers are on the wire
            yield b"--b\r\nContent-Disposition: form-data; name=files; filename=x.dcm\r\n\r\n"
            release.wait(30)
            yield b"x\r\n--b--\r\n"

        def send_slowly():
            answer = httpx.post(
                url + "/api/score", content=slow_body(), timeout=60,
                headers={**bearer, "content-type": "multipart/form-data; boundary=b"},
            )  # fmt: skip
            first["status"] = answer.status_code

        sender = threading.Thread(target=send_slowly)
        sender.start()
        assert sending.wait(30)
        time.sleep(0.5)  # the server reads its headers and gives it the one slot
        busy = None
        for _ in range(100):  # until the slow upload holds the page's one slot
            busy = httpx.post(url + "/api/score", files=[("files", ("a", b"x"))], headers=bearer)
            if busy.status_code == 503:
                break
            time.sleep(0.1)
        release.set()
        sender.join(60)
        assert busy is not None and busy.status_code == 503, (busy.text, first)
        assert busy.headers["retry-after"] == "10"
        assert first["status"] == 422  # the slow upload was taken and judged: no CT in it
    finally:
        server.terminate()
        server.wait(30)
    printed = server.stdout.read() if server.stdout else ""
    assert "open it once as /?token=TOKEN" in printed and token not in printed  # never shown


# Whole studies, as a urologist exports them from the PACS viewer.


def _whole_study(folder: Path) -> tuple[list[Path], list[float]]:
    """An abdominal series of 20 slices and a chest series of the same study; the files
    and where (z) the 6 slices a lesion SEG marks lie."""
    from pydicom.uid import generate_uid

    from tests.factory import ct_series, save

    study = generate_uid()
    abdomen = ct_series(study, "WHOLE", n=20, BodyPartExamined="ABDOMEN")
    chest = ct_series(study, "WHOLE", n=15, start=200, BodyPartExamined="CHEST")
    paths = [save(ds, folder / f"a{i:02d}.dcm") for i, ds in enumerate(abdomen)]
    paths += [save(ds, folder / f"c{i:02d}.dcm") for i, ds in enumerate(chest)]
    return paths, [float(ds.ImagePositionPatient[2]) for ds in abdomen[8:14]]


def test_a_whole_study_votes_on_the_slices_its_seg_marks(model, tmp_path):
    from tests.factory import lesion_seg, save

    model_dir, _ = model
    paths, lesion_z = _whole_study(tmp_path / "study")
    abdomen = [pydicom.dcmread(p) for p in paths if p.name.startswith("a")]
    seg = save(lesion_seg(abdomen, range(8, 14)), tmp_path / "study" / "seg.dcm")
    config = WebConfig(str(model_dir), str(tmp_path), score=ScoreConfig(explain_per_side=2))
    result = score_upload([*paths, seg], config)

    assert result["status"] == "voted" and result["n_images"] == 6
    selection = result["selection"]
    assert selection["source"] == "annotation"
    assert (selection["slices_in_upload"], selection["slices_screened"]) == (35, 20)
    decisions = {row["body_part"]: row for row in selection["series"]}
    assert decisions["ABDOMEN"]["decision"] == "selected"
    assert decisions["CHEST"]["decision"] == "not_abdominal"
    assert "CHEST" in decisions["CHEST"]["reason"]
    voted = [s for s in result["slices"] if s["voted"]]
    assert sorted(s["z"] for s in voted) == pytest.approx(sorted(lesion_z))
    assert all(s["probability"] is not None for s in voted)
    assert all(s["probability"] is None for s in result["slices"] if not s["voted"])
    probabilities = np.array([s["probability"] for s in voted])
    assert result["vote"] == vote(probabilities).vote.value
    assert [r["code"] for r in result["rejects"]] == ["non_image"]  # the SEG: lesion truth


def test_a_whole_study_without_annotation_or_selector_is_refused(model, tmp_path):
    model_dir, _ = model
    paths, _ = _whole_study(tmp_path / "study")
    with pytest.raises(InputError, match=r"upload the study's lesion annotation \(DICOM SEG\)"):
        score_upload(paths, WebConfig(str(model_dir), str(tmp_path)))


def test_a_chest_ct_alone_gets_no_mass_found_never_a_vote(model, tmp_path):
    model_dir, _ = model
    paths, _ = _whole_study(tmp_path / "study")
    chest = [p for p in paths if p.name.startswith("c")]
    result = score_upload(chest, WebConfig(str(model_dir), str(tmp_path), score=CURATED))
    assert result["status"] == "no_mass_found" and result["vote"] is None
    assert result["selection"]["slices_voted"] == 0 and result["heatmaps"] == []


@pytest.fixture(scope="module")
def selector(tmp_path_factory):
    """A slice selector trained on whole synthetic studies, and one more patient's whole
    study (its files without the SEG) that it never saw."""
    from renalflow.tasks.config import Task
    from tests.factory import build_whole_store

    root = tmp_path_factory.mktemp("selector")
    store = build_whole_store(root, patients=6, seed=5)
    config = profile_config("cpu-demo", input_size=64, epochs=1, augment=False)
    train_model(store, root / "model", config, log=lambda _: None, task=Task.SELECTOR)
    unseen = build_whole_store(root / "unseen", patients=1, seed=6)
    files = [
        path
        for path in sorted((root / "unseen" / "synth" / "archive").rglob("*.dcm"))
        if pydicom.dcmread(path, stop_before_pixels=True).Modality == "CT"
    ]
    return root / "model", files, unseen


def test_the_pages_selector_decides_which_slices_of_a_whole_study_vote(model, selector, tmp_path):
    from renalflow.tasks.model_dir import read_model_info

    model_dir, _ = model
    selector_dir, files, _ = selector
    info = read_model_info(selector_dir)
    config = WebConfig(str(model_dir), str(tmp_path), selector=str(selector_dir))
    paths = _upload(files, tmp_path / "up", config)
    result = score_upload(paths, config)

    selection = result["selection"]
    assert selection["source"] == "selector"
    assert selection["selector_version"] == info.model_version
    assert selection["selector_threshold"] == info.selector_threshold  # the stored one
    screened = [s for s in result["slices"] if s["screened"]]
    assert screened and all(s["selector_probability"] is not None for s in screened)
    chosen = [s for s in screened if s["selector_probability"] >= info.selector_threshold]
    assert [s["voted"] for s in result["slices"]] == [s in chosen for s in result["slices"]]
    assert selection["slices_voted"] == len(chosen)
    expected = "voted" if chosen else "no_mass_found"
    assert result["status"] == expected
