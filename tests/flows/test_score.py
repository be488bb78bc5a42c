"""Scoring archives into the results table through Prefect on a real Dask cluster."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from renalflow.flows.ingest import ingest_flow
from renalflow.flows.score import score_flow
from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.model import profile_config
from renalflow.tasks.model_dir import ModelDir
from renalflow.tasks.pseudonym import KEY_ENV, patient_pseudonym
from renalflow.tasks.query import run_query
from renalflow.tasks.results import STUDY_VOTES, history
from renalflow.tasks.score import ScoreConfig
from renalflow.tasks.split import SplitConfig, load_split
from renalflow.tasks.train import train_model
from tests.factory import curated_archive, free_port, start_cli

KEY = "renalflow-test-key-0123456789abcdef"
SIZE = 64  # tiny images keep the model and its inference fast


def runner(cluster):
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=cluster.scheduler_address)


@pytest.fixture(scope="module")
def trained(dask_cluster, tmp_path_factory):
    """An archive, its slice store and a tiny model trained on it."""
    root = tmp_path_factory.mktemp("score")
    curated_archive(root / "synth", patients=6, seed=31, slices=4, jobs=2, benign_fraction=0.5)
    archive, store = str(root / "synth" / "archive"), str(root / "store")
    ingest_flow.with_options(task_runner=runner(dask_cluster))(
        archive=archive,
        store=store,
        labels=str(root / "synth" / "labels.csv"),
        preprocess=PreprocessConfig(output_size=SIZE),
    )
    model = root / "model"
    config = profile_config("cpu-demo", input_size=SIZE, epochs=1)
    train_model(store, model, config, SplitConfig(seed=1))
    return {"root": root, "archive": archive, "store": store, "model": str(model)}


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


# The synthetic archives here hold curated slices through the mass (the paper's images).
CURATED = ScoreConfig(all_slices=True)


def score(cluster, trained, results: str, archive: str | None = None, model: str | None = None):
    return score_flow.with_options(task_runner=runner(cluster))(
        archive=archive or trained["archive"],
        model_dir=model or trained["model"],
        results=results,
        store=trained["store"],
        config=CURATED,
    )


def identifiers(archive: str) -> set[str]:
    """Every direct identifier in the archive's DICOM headers."""
    found: set[str] = set()
    for path in Path(archive).rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for keyword in (
                "PatientID",
                "PatientName",
                "PatientBirthDate",
                "AccessionNumber",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPInstanceUID",
            ):
                value = str(ds.get(keyword, "") or "")
                if value:
                    found.add(value)
    return found


def all_values(results: str) -> set[str]:
    values: set[str] = set()
    for table in ("study_votes", "patient_votes", "slice_scores"):
        for column in run_query(results, f"select * from {table}").columns:
            values |= {str(v) for v in column.to_pylist() if v is not None}
    return values


def test_scoring_twice_writes_one_row_per_study_and_no_identifiers(
    dask_cluster, trained, key, tmp_path
):
    results = str(tmp_path / "R")
    first = score(dask_cluster, trained, results)
    assert first.studies_scored == first.studies_in_archive == 6
    assert first.vote_rows_inserted == 6 and first.images_scored == first.slice_rows_inserted
    version = history(results)[0]["version"]
    again = score(dask_cluster, trained, results)
    assert again.already_scored == 6 and again.studies_scored == 0 and again.files_new == 0
    assert history(results)[0]["version"] == version, "a rerun must not even commit"
    rows = run_query(results, "select count(*), count(distinct study_key) from study_votes")
    assert rows.to_pylist() == [{"count_star()": 6, "count(DISTINCT study_key)": 6}]
    # Votes agree with their image scores.
    check = run_query(
        results,
        """select study_key, v.n_images, count(*) as n, sum(s.malignant::int) as m,
                  v.n_malignant
           from study_votes v join slice_scores s using (study_key, model_version)
           group by all""",
    ).to_pylist()
    assert all(r["n"] == r["n_images"] and r["m"] == r["n_malignant"] for r in check)
    # Every patient vote says whether the model trained on the patient: its split.json.
    names = {"train": "training", "validation": "validation", "test": "none"}
    split = load_split(ModelDir(trained["model"]).split)
    expected = {patient_pseudonym(KEY.encode(), p): names[s] for p, s in split.items()}
    flagged = run_query(results, "select patient_key, in_training from patient_votes")
    assert dict(zip(*flagged.to_pydict().values(), strict=True)) == expected
    # No direct identifier anywhere in R, as a value or as part of one.
    leaked = identifiers(trained["archive"])
    values = all_values(results)
    assert not leaked & values
    assert not [v for v in values for i in leaked if len(i) > 6 and i in v]


def test_new_studies_are_the_only_work_of_the_next_night(dask_cluster, trained, key, tmp_path):
    archive = tmp_path / "archive"
    shutil.copytree(trained["archive"], archive)
    results = str(tmp_path / "R")
    score(dask_cluster, trained, results, archive=str(archive))
    new = curated_archive(tmp_path / "new", patients=2, seed=77, slices=3, patient_prefix="NEW")
    shutil.copytree(new, archive / "arrived-tonight")
    night = score(dask_cluster, trained, results, archive=str(archive))
    assert night.already_scored == 6 and night.studies_scored == 2 and night.vote_rows_inserted == 2
    assert night.images_scored == night.files_new
    total = run_query(results, "select count(*) from study_votes").column(0)[0].as_py()
    assert total == 8


def test_a_new_model_version_adds_its_own_rows(dask_cluster, trained, key, tmp_path):
    results = str(tmp_path / "R")
    score(dask_cluster, trained, results)
    other = tmp_path / "model-2"
    config = profile_config("cpu-demo", input_size=SIZE, epochs=1, seed=7)
    train_model(trained["store"], other, config, SplitConfig(seed=1))
    second = score(dask_cluster, trained, results, model=str(other))
    assert second.studies_scored == 6 and second.already_scored == 0
    per_model = run_query(
        results, "select model_version, count(*) n from study_votes group by 1 order by 1"
    ).to_pylist()
    assert [r["n"] for r in per_model] == [6, 6]


def rows_and_keys(results: str, table: str, key: str) -> dict[str, int]:
    """Rows `n` and distinct `key`s `k` of `table`: the same when nothing was scored twice."""
    sql = f"select count(*) n, count(distinct {key}) k from {table}"
    return run_query(results, sql).to_pylist()[0]


def test_without_a_key_nothing_is_scored(trained, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    proc = start_cli(
        "score", trained["archive"], "--model-dir", trained["model"], "--results",
        str(tmp_path / "R"), env=env,
    )  # fmt: skip
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "RENALFLOW_PSEUDONYM_KEY" in out and "secrets.token_hex" in out
    assert not (tmp_path / "R").exists() and not (tmp_path / "R.slices").exists()


def test_studies_nothing_can_select_slices_in_are_refused_in_one_line(trained, tmp_path):
    """No annotations, no selector, no --all-slices: a vote would mean nothing."""
    env = {**os.environ, KEY_ENV: KEY}
    results = str(tmp_path / "R")
    args = ["score", trained["archive"], "--model-dir", trained["model"], "--results", results]
    proc = start_cli(*args, "--store", trained["store"], "--workers", "1", env=env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    expected = "renalflow score: error: 6 of 6 studies with an abdominal series carry no lesion"
    assert lines[-1].startswith(expected), out
    assert "--selector MODEL" in lines[-1] and "--all-slices" in lines[-1]
    assert "Traceback" not in out
    assert run_query(results, "select count(*) from study_votes").column(0)[0].as_py() == 0


def test_killed_run_leaves_the_table_as_it_was_and_a_rerun_completes(
    dask_cluster, trained, key, tmp_path
):
    archive = tmp_path / "archive"
    shutil.copytree(trained["archive"], archive)
    results = str(tmp_path / "R")
    score(dask_cluster, trained, results, archive=str(archive))
    before = history(results)[0]["version"]
    late = curated_archive(tmp_path / "new", patients=3, seed=78, slices=3, patient_prefix="LATE")
    shutil.copytree(late, archive / "late")
    env = {**os.environ, KEY_ENV: KEY}
    args = ["score", str(archive), "--model-dir", trained["model"], "--results", results]
    args += ["--store", trained["store"], "--workers", "1", "--all-slices"]
    proc = start_cli(*args, env=env, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 240
    for line in proc.stdout:  # kill it once it has planned and started scoring
        if "to score" in line or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    after = history(results)[0]["version"]
    # Each commit is atomic: either nothing of the killed run is visible, or all of it.
    n = run_query(results, "select count(*) from study_votes").column(0)[0].as_py()
    assert (after == before and n == 6) or n == 9
    rerun = score(dask_cluster, trained, results, archive=str(archive))
    assert rerun.already_scored + rerun.studies_scored == 9
    assert rows_and_keys(results, "study_votes", "study_key") == {"n": 9, "k": 9}
    images = rows_and_keys(results, "slice_scores", "image_key")
    assert images["n"] == images["k"]


def test_two_runs_at_the_same_time_neither_corrupt_nor_duplicate(trained, tmp_path, prefect_api):
    archive = tmp_path / "archive"
    shutil.copytree(trained["archive"], archive)
    results, store = str(tmp_path / "R"), str(tmp_path / "S")
    env = {**os.environ, KEY_ENV: KEY}
    args = ["score", str(archive), "--model-dir", trained["model"], "--results", results]
    args += ["--store", store, "--workers", "1", "--all-slices"]
    procs = [start_cli(*args, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert rows_and_keys(results, "study_votes", "study_key") == {"n": 6, "k": 6}
    images = rows_and_keys(results, "slice_scores", "image_key")
    assert images["n"] == images["k"] > 0
    assert STUDY_VOTES in os.listdir(results)


def test_serve_registers_a_nightly_deployment_that_runs(trained, tmp_path, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    results = str(tmp_path / "R")
    env = {**os.environ, KEY_ENV: KEY, "PREFECT_API_URL": prefect_api}
    args = ["serve", trained["archive"], "--model-dir", trained["model"]]
    args += ["--results", results, "--store", trained["store"], "--workers", "1"]
    args += ["--timezone", "Europe/Copenhagen", "--all-slices"]
    proc = start_cli(*args, env=env, start_new_session=True)
    try:
        wanted = {
            "renalflow-score/nightly",
            "renalflow-ingest/on-demand",
            "renalflow-train/on-demand",
        }
        names: set[str] = set()
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while not wanted <= names and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(1)
                names = {
                    f"{client.read_flow(d.flow_id).name}/{d.name}"
                    for d in client.read_deployments()
                }
            assert wanted <= names, f"deployments seen: {names}"
            deployment = client.read_deployment_by_name("renalflow-score/nightly")
            schedule = deployment.schedules[0].schedule
            assert schedule.cron == "0 2 * * *" and schedule.timezone == "Europe/Copenhagen"
            params = deployment.parameters["params"]
            assert params["archive"] == trained["archive"]
            assert params["results"] == results
            assert params["workers"] == 1
            assert params["all_slices"] is True  # the screening options reach the schedule
            schema = deployment.parameter_openapi_schema
            assert "min_images" in schema["definitions"]["ScoreParams"]["properties"]
        # Trigger the nightly job now, as an operator would from the UI, and wait for it.
        run = run_deployment("renalflow-score/nightly", timeout=300)
        assert run.state is not None and run.state.is_completed(), run.state
        n = run_query(results, "select count(*) from study_votes").column(0)[0].as_py()
        assert n == 6
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_key_from_a_prefect_secret_block(prefect_api, monkeypatch):
    from prefect.blocks.system import Secret

    from renalflow.flows.score import resolve_key
    from renalflow.tasks.errors import InputError

    monkeypatch.delenv(KEY_ENV, raising=False)
    Secret(value=KEY).save("renalflow-test-key", overwrite=True)
    assert resolve_key("renalflow-test-key") == KEY.encode()
    with pytest.raises(InputError, match="no Prefect Secret block"):
        resolve_key("no-such-block")
    with pytest.raises(InputError, match="RENALFLOW_PSEUDONYM_KEY"):
        resolve_key(None)


def test_explain_writes_heat_maps_of_the_deciding_slices(dask_cluster, trained, key, tmp_path):
    from PIL import Image

    results = str(tmp_path / "R")
    summary = score_flow.with_options(task_runner=runner(dask_cluster))(
        archive=trained["archive"],
        model_dir=trained["model"],
        results=results,
        store=trained["store"],
        config=ScoreConfig(explain=True, explain_per_side=2, all_slices=True),
    )
    assert 6 <= summary.heatmaps <= 6 * 4 and summary.heatmap_dir == results + ".heatmaps"
    linked = run_query(
        results,
        "select study_key, image_key, heatmap_uri from slice_scores where heatmap_uri is not null",
    ).to_pylist()
    assert len(linked) == summary.heatmaps
    per_study: dict[str, int] = {}
    for row in linked:
        assert row["heatmap_uri"].endswith(f"{row['study_key']}/{row['image_key']}.png")
        with Image.open(row["heatmap_uri"]) as picture:
            assert picture.format == "PNG" and picture.size[0] >= SIZE
        per_study[row["study_key"]] = per_study.get(row["study_key"], 0) + 1
    assert len(per_study) == 6 and max(per_study.values()) <= 4


@pytest.fixture
def web(trained, tmp_path):
    """`renalflow web` on loopback, as a urologist's browser would reach it."""
    import urllib.request

    port = free_port()
    args = ["web", "--model-dir", trained["model"], "--port", str(port)]
    args += ["--out", str(tmp_path / "web"), "--all-slices"]  # the curated synthetic archive
    proc = start_cli(*args, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                assert reply.status == 200
                break
        except OSError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "renalflow web did not start"
            time.sleep(0.5)
    try:
        yield url, tmp_path / "web"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@pytest.fixture
def browser():
    """Headless Chromium from the system (Debian's chromium and chromium-driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, (
        "the browser test needs chromium and chromedriver: `make test` installs them "
        "(apt-get install chromium chromium-driver)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1200,2000")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_web_page_shows_the_vote_the_batch_scorer_gives(
    dask_cluster, trained, key, tmp_path, web, browser
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    from renalflow.tasks.pseudonym import pseudonym

    url, workdir = web
    results = str(tmp_path / "R")
    score(dask_cluster, trained, results)
    files: dict[str, list[str]] = {}
    for path in sorted(Path(trained["archive"]).rglob("*")):
        if path.is_file():
            patient = str(pydicom.dcmread(path, stop_before_pixels=True).PatientID)
            files.setdefault(patient, []).append(str(path))
    patient, paths = sorted(files.items())[0]
    batch = run_query(
        results,
        f"select vote, n_images, n_malignant from study_votes "
        f"where patient_key = '{pseudonym(KEY.encode(), patient)}'",
    ).to_pylist()
    assert len(batch) == 1

    browser.get(url)
    browser.find_element(By.ID, "files").send_keys("\n".join(paths))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 180).until(ready.visibility_of_element_located((By.ID, "result")))
    shown = browser.find_element(By.ID, "vote").text
    share = browser.find_element(By.ID, "share").text
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    browser.save_screenshot(str(artifacts / "web-vote.png"))
    assert shown == batch[0]["vote"]
    assert share.startswith(f"{batch[0]['n_malignant']} of {batch[0]['n_images']} slices")
    assert browser.find_elements(By.CSS_SELECTOR, "#heat img"), "no heat maps shown"
    assert not any(workdir.iterdir()), "uploads must be removed after scoring"

    # A whole study with its lesion SEG: the page says what it screened and why.
    from pydicom.uid import generate_uid

    from tests.factory import ct_series, lesion_seg, save

    study = generate_uid()
    abdomen = ct_series(study, "WHOLE", n=20, BodyPartExamined="ABDOMEN")
    chest = ct_series(study, "WHOLE", n=15, start=200, BodyPartExamined="CHEST")
    whole = [str(save(ds, tmp_path / "whole" / f"{i:03d}.dcm")) for i, ds in
             enumerate([*abdomen, *chest, lesion_seg(abdomen, range(8, 14))])]  # fmt: skip
    browser.get(url)
    browser.find_element(By.ID, "files").send_keys("\n".join(whole))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 180).until(ready.visibility_of_element_located((By.ID, "result")))
    browser.save_screenshot(str(artifacts / "web-whole-study.png"))
    selected = browser.find_element(By.ID, "selected").text
    assert selected.startswith("6 of 35 slices voted (20 in screened series); chosen by annotation")
    table = browser.find_element(By.ID, "series").text
    assert "not_abdominal" in table and "selected" in table
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart circle.voted")) == 6
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart line.unvoted")) == 29

    # A file that is not CT gets the ingest's reason, in the page.
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    browser.get(url)
    browser.find_element(By.ID, "files").send_keys(str(junk))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "error").text.strip() != "")
    error = browser.find_element(By.ID, "error").text
    assert "none of the uploaded files is a usable axial CT slice" in error and "not_dicom" in error


def test_whole_studies_vote_only_on_what_was_selected(dask_cluster, trained, key, tmp_path):
    """An archive as hospitals keep it: a study with a lesion SEG among other series, a
    chest CT, and a study reconstructed thin and thick. Scored through the real flow."""
    from pydicom.uid import generate_uid

    from tests.factory import ct_series, lesion_seg, save

    archive = tmp_path / "archive"
    annotated_study, chest_study, twin_study = (generate_uid() for _ in range(3))
    annotated = ct_series(annotated_study, "ANNOTATED", n=20)
    lesion = range(8, 14)
    chest = ct_series(annotated_study, "ANNOTATED", n=15, start=200, BodyPartExamined="CHEST")
    only_chest = ct_series(chest_study, "CHEST", n=15, BodyPartExamined="CHEST")
    frame = generate_uid()
    thin = ct_series(twin_study, "TWIN", n=40, thickness=1.0, frame_of_reference=frame)
    thick = ct_series(twin_study, "TWIN", n=8, thickness=5.0, frame_of_reference=frame)
    for name, series in (("a", annotated), ("c", chest), ("o", only_chest), ("t1", thin),
                         ("t5", thick)):  # fmt: skip
        for i, ds in enumerate(series):
            save(ds, archive / name / f"{i:03d}.dcm")
    save(lesion_seg(annotated, lesion), archive / "a" / "seg.dcm")

    results = str(tmp_path / "R")
    summary = score_flow.with_options(task_runner=runner(dask_cluster))(
        archive=str(archive), model_dir=trained["model"], results=results,
        store=str(tmp_path / "S"), config=CURATED,
    )  # fmt: skip
    rows = run_query(
        results,
        "select patient_key, status, n_images, slices_in_study, selection_source, "
        "n_series, series_skipped from study_votes order by slices_in_study",
    ).to_pylist()
    by_slices = {r["slices_in_study"]: r for r in rows}
    # The chest CT: nothing to screen, no vote (never "benign").
    assert by_slices[15]["status"] == "no_mass_found"
    assert by_slices[15]["series_skipped"] == "not_abdominal:1" and by_slices[15]["n_series"] == 0
    # The annotated study: its 6 lesion slices vote, not its other 29.
    assert by_slices[35]["selection_source"] == "annotation" and by_slices[35]["n_images"] == 6
    assert by_slices[35]["series_skipped"] == "not_abdominal:1"
    # The twin pair: voted once, on the 5 mm reconstruction (all slices: --all-slices).
    assert by_slices[48]["n_images"] == 8 and by_slices[48]["series_skipped"] == "twin:1"
    assert by_slices[48]["selection_source"] == "all"
    assert summary.slices_selected == 14 and summary.slices_in_studies == 98
    assert summary.votes.get("no_mass_found") == 1
    # Only what a model saw has a row; the classifier saw the selected slices.
    scored = run_query(results, "select count(*) n, sum(voted::int) v from slice_scores")
    assert scored.to_pylist() == [{"n": 14, "v": 14}]
    patients = run_query(results, "select status, n_studies from patient_votes order by 2")
    assert len(patients.to_pylist()) == 3
