"""The slice selector: its labels, threshold, model directory and evaluation, on a small
store of whole synthetic studies whose lesions come as DICOM SEG objects in the archive."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from renalflow.tasks.annotations import LesionRow
from renalflow.tasks.config import (
    DEVELOPMENT,
    SELECTOR_HARD_NEGATIVE_MM,
    SELECTOR_HARD_NEGATIVE_SHARE,
    PreprocessConfig,
    Split,
    Task,
)
from renalflow.tasks.dataset import load_slices
from renalflow.tasks.errors import InputError, ModelError
from renalflow.tasks.evaluate import evaluate
from renalflow.tasks.model import predict_probabilities, profile_config
from renalflow.tasks.model_dir import ModelDir, ModelInfo, load_model, read_model_info, require_task
from renalflow.tasks.selector import (
    choose_threshold,
    hard_negatives,
    read_threshold,
    selected_slices,
    selector_draw,
    selector_slices,
    study_recall,
)
from renalflow.tasks.split import load_split
from renalflow.tasks.store import write_lesions
from renalflow.tasks.train import train_model
from tests.factory import build_whole_store

SIZE = 64


@pytest.fixture(scope="module")
def whole_store(tmp_path_factory) -> str:
    return build_whole_store(tmp_path_factory.mktemp("whole"), patients=10, seed=7, size=SIZE)


@pytest.fixture(scope="module")
def selector(whole_store, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("selector") / "model"
    config = profile_config("cpu-demo", input_size=SIZE, epochs=2, augment=False)
    result = train_model(whole_store, model_dir, config, log=lambda _: None, task=Task.SELECTOR)
    return result, model_dir


def _split_slices(store: str, model_dir: Path, split: Split):
    patients = {p for p, s in load_split(model_dir / "split.json").items() if s == split.value}
    return selector_slices(load_slices(store, cohorts=[DEVELOPMENT], patients=patients))


def test_selected_slices_keeps_the_slices_at_or_above_the_threshold():
    p = np.array([0.1, 0.5, 0.49999, 0.9], np.float32)
    assert selected_slices(p, float(p[1])).tolist() == [False, True, False, True]


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95, 1.0])
def test_threshold_is_the_highest_that_finds_the_target_share_of_lesion_slices(target):
    rng = np.random.default_rng(3)
    lesion = rng.random(200) < 0.2
    # Rounded, so that probabilities tie, as a sigmoid's float32 outputs can.
    p = np.round(np.clip(rng.normal(np.where(lesion, 0.7, 0.3), 0.2), 0, 1), 2)
    chosen = choose_threshold(lesion, p, target)

    def sensitivity(t: float) -> float:
        return float(selected_slices(p[lesion], t).mean())

    assert sensitivity(chosen.threshold) >= target
    assert all(sensitivity(t) < target for t in np.unique(p) if t > chosen.threshold)
    assert chosen.sensitivity == sensitivity(chosen.threshold)
    assert chosen.specificity == float((~selected_slices(p[~lesion], chosen.threshold)).mean())
    assert (chosen.lesion_slices, chosen.other_slices) == (lesion.sum(), (~lesion).sum())


def test_threshold_without_lesion_slices_cannot_be_chosen():
    with pytest.raises(InputError, match=r"no lesion slice.*another --seed"):
        choose_threshold(np.zeros(5, bool), np.linspace(0, 1, 5))


def test_study_recall_counts_lesion_slices_found_per_study():
    meta = pd.DataFrame(
        {"patient_id": ["a"] * 5 + ["b"] * 3, "study_instance_uid": ["1"] * 5 + ["2"] * 3}
    )
    lesion = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    selected = np.array([1, 0, 1, 1, 0, 1, 0, 0], bool)
    table = study_recall(meta, lesion, selected)
    assert table.to_dict("records") == [
        {"patient_id": "a", "study_instance_uid": "1", "lesion_slices": 3, "found": 2,
         "share_found": pytest.approx(2 / 3), "other_selected": 1},
    ]  # fmt: skip


def test_selector_learns_only_from_slices_whose_lesion_is_known(whole_store, selector):
    _, model_dir = selector
    everything = load_slices(whole_store)
    known = everything.meta["lesion"].notna()
    assert 0 < known.sum() < len(everything)  # the chest CTs carry no annotation
    lineage = json.loads((model_dir / "lineage.json").read_text())
    rows = lineage["rows"]
    assert sum(rows[s.value]["total"] for s in Split) == known.sum()
    lesion = everything.meta["lesion"][known].astype(bool)
    assert sum(rows[s.value].get("lesion", 0) for s in Split) == lesion.sum()
    assert sum(rows[s.value].get("no lesion", 0) for s in Split) == (~lesion).sum()


def test_hard_negatives_are_the_unmarked_slices_near_a_lesion_of_their_own_series():
    meta = pd.DataFrame(
        {
            "series_instance_uid": ["a"] * 10 + ["b"] * 4,
            "z": [*range(0, 50, 5), 0, 5, 10, 15],  # mm
        }
    )
    lesion = np.zeros(14, bool)
    lesion[[4, 5]] = True  # z 20 and 25 of series a; series b has no lesion
    near = hard_negatives(meta, lesion, within_mm=10.0)
    assert np.flatnonzero(near).tolist() == [2, 3, 6, 7]  # z 10, 15, 30, 35
    assert not hard_negatives(meta, lesion, within_mm=0.0).any()


def test_selector_draw_gives_hard_negatives_their_share_and_every_lesion_slice():
    labels = np.array([1] * 10 + [0] * 90)
    hard = np.zeros(100, bool)
    hard[10:20] = True  # 10 hard among 90 negatives
    order = selector_draw(labels, hard, 0.5, np.random.default_rng(0))
    assert len(order) == 180  # as many as a plain 50:50 draw
    assert (labels[order] == 1).sum() == 90 and set(range(10)) <= set(order.tolist())
    assert hard[order].sum() == 45  # half of the 90 negatives drawn
    assert len(set(order[~hard[order] & (labels[order] == 0)].tolist())) == 45  # no repeat
    plain = selector_draw(labels, hard, 0.0, np.random.default_rng(0))
    assert sorted(plain[labels[plain] == 0].tolist()) == list(range(10, 100))
    again = selector_draw(labels, hard, 0.5, np.random.default_rng(0))
    assert again.tolist() == order.tolist()  # seeded


def test_selector_model_dir_records_its_task_and_threshold(selector):
    result, model_dir = selector
    config = json.loads((model_dir / "config.json").read_text())
    assert config["task"] == "selector" and config["target_sensitivity"] == 0.95
    assert config["hard_negative_mm"] == SELECTOR_HARD_NEGATIVE_MM
    assert config["hard_negative_share"] == SELECTOR_HARD_NEGATIVE_SHARE
    stored = json.loads((model_dir / "selector.json").read_text())
    assert stored["target_sensitivity"] == 0.95 and stored["sensitivity"] >= 0.95
    info = read_model_info(model_dir)
    assert info.task is Task.SELECTOR
    assert info.selector_threshold == stored["threshold"] == result.selector_threshold


def test_threshold_read_back_is_the_one_chosen_on_validation_predictions(whole_store, selector):
    _, model_dir = selector
    validation = _split_slices(whole_store, model_dir, Split.VALIDATION)
    assert validation.labels.any()
    probabilities = predict_probabilities(load_model(model_dir), validation.images)
    expected = choose_threshold(validation.labels, probabilities, 0.95)
    assert read_model_info(model_dir).selector_threshold == expected.threshold
    assert read_threshold(model_dir) == expected
    found = selected_slices(probabilities[validation.labels == 1], expected.threshold)
    assert found.mean() >= 0.95


def test_a_classifier_is_refused_where_a_selector_is_asked_for():
    info = ModelInfo("/models/classifier", "v1", "cpu-demo", PreprocessConfig())
    assert info.task is Task.CLASSIFIER and info.selector_threshold is None
    with pytest.raises(ModelError, match=r"classifier model, not a selector.*--task selector"):
        require_task(info, Task.SELECTOR)


def test_selector_needs_annotated_slices(store, tmp_path):
    """The curated (lesion-only) store has no annotations: one line, nothing written."""
    config = profile_config("cpu-demo", input_size=SIZE, epochs=1)
    with pytest.raises(InputError, match=r"known lesion annotation.*--lesions CSV"):
        train_model(store, tmp_path / "model", config, log=lambda _: None, task=Task.SELECTOR)
    assert not (tmp_path / "model").exists()


def test_evaluate_a_selector_at_its_stored_threshold(whole_store, selector, tmp_path):
    _, model_dir = selector
    metrics = evaluate(whole_store, model_dir, tmp_path / "report", n_bootstrap=50)
    test = _split_slices(whole_store, model_dir, Split.TEST)
    threshold = read_model_info(model_dir).selector_threshold
    assert metrics["task"] == "selector" and metrics["threshold"] == threshold
    probabilities = predict_probabilities(load_model(model_dir), test.images)
    selected = selected_slices(probabilities, threshold)
    part = metrics["slice"]
    assert part["n"] == len(test)
    assert part["tp"] == int((selected & (test.labels == 1)).sum())
    assert part["tn"] == int((~selected & (test.labels == 0)).sum())
    for key in ("sensitivity", "specificity"):
        low, high = part[f"{key}_ci95"]
        assert low <= part[key] <= high
    studies = pd.read_csv(tmp_path / "report" / "studies.csv")
    assert metrics["study"]["studies_with_lesion"] == len(studies) > 0
    assert metrics["study"]["share_found_min"] == pytest.approx(studies["share_found"].min())
    assert metrics["study"]["share_found_median"] == pytest.approx(studies["share_found"].median())
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["slice"] == part
    page = (tmp_path / "report" / "report.html").read_text()
    assert "slice selector evaluation" in page and f"{threshold:.6g}" in page


def test_evaluate_a_set_without_other_slices_says_specificity_is_undefined(
    whole_store, selector, tmp_path
):
    """Every annotated series marked lesion from end to end: one class, no crash."""
    _, model_dir = selector
    store = tmp_path / "store"
    shutil.copytree(whole_store, store)
    annotated = load_slices(str(store)).meta.dropna(subset=["lesion"])
    rows = [
        LesionRow(study, series, "csv", "test", z_min=-1e6, z_max=1e6)
        for study, series in annotated[["study_instance_uid", "series_instance_uid"]]
        .drop_duplicates()
        .itertuples(index=False)
    ]
    write_lesions(str(store), rows, "run", "everything")
    metrics = evaluate(str(store), model_dir, tmp_path / "report", n_bootstrap=20)
    part = metrics["slice"]
    assert part["fp"] == part["tn"] == 0 and part["fn"] + part["tp"] == part["n"]
    assert part["specificity"] is None and part["specificity_ci95"] == [None, None]
    assert part["auc"] is None
    assert any("specificity and the AUC are undefined" in w for w in metrics["warnings"])
    page = (tmp_path / "report" / "report.html").read_text()
    assert "undefined" in page and "Caution: every slice here shows a lesion" in page


def test_the_classifier_trains_on_the_annotated_lesion_slices_of_whole_studies(
    whole_store, tmp_path
):
    """The same store the selector learns from: the classifier sees its lesion slices
    only, never the liver, pelvis or chest levels of a whole study."""
    slices = load_slices(whole_store, cohorts=[DEVELOPMENT], labelled_only=True)
    lesion = slices.meta["lesion"].fillna(False).astype(bool)
    config = profile_config("cpu-demo", input_size=SIZE, epochs=1, augment=False)
    train_model(whole_store, tmp_path / "classifier", config, log=lambda _: None)
    lineage = json.loads(ModelDir(tmp_path / "classifier").lineage.read_text())
    trained = sum(lineage["rows"][split.value]["total"] for split in Split)
    assert trained == int(lesion.sum()) > 0
    assert lineage["labelled_slices_not_through_the_mass"] == len(slices) - trained
