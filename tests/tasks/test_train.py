"""A tiny end-to-end training and evaluation on a small synthetic store (cpu-demo profile)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from renalflow.tasks.evaluate import evaluate, patient_table
from renalflow.tasks.model import profile_config
from renalflow.tasks.split import load_split
from renalflow.tasks.train import train_model
from tests.factory import build_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return build_store(tmp_path_factory.mktemp("train"), patients=12, seed=5)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("model")
    # Without augmentation: on 12 patients the question is whether training fits at all.
    config = profile_config("cpu-demo", input_size=64, epochs=4, augment=False)
    return train_model(store, model_dir, config, log=lambda _: None), model_dir


def test_training_loss_goes_down(trained):
    result, _ = trained
    loss = result.history["loss"]
    assert len(loss) == 4 and loss[-1] < loss[0]


def test_training_leaves_every_artifact(trained):
    result, model_dir = trained
    for name in (
        "model.keras",
        "history.json",
        "history.csv",
        "curves.png",
        "config.json",
        "split.json",
        "lineage.json",
        "model_version.txt",
        "environment.json",
    ):
        assert (model_dir / name).exists(), name
    assert len(list((model_dir / "checkpoints").glob("epoch-*.keras"))) == 4
    assert (model_dir / "model_version.txt").read_text().strip() == result.model_version
    config = json.loads((model_dir / "config.json").read_text())
    assert "NOT the paper's" in config["note"] and config["train"]["seed"] == 2020
    lineage = json.loads((model_dir / "lineage.json").read_text())
    assert sum(lineage["patients"][s]["total"] for s in ("train", "validation", "test")) == 12
    history = json.loads((model_dir / "history.json").read_text())
    assert history["selected_epoch"] == result.selected_epoch
    assert {"val_loss", "val_auc", "accuracy"} <= set(history)


def test_validation_and_the_kept_model_use_the_averaged_weights(store, tmp_path):
    """With a momentum so close to 1 that the average barely moves, the checkpoints of
    epochs 1 and 2 of one run hold the same weights; without averaging they differ."""
    import keras

    def change_between_checkpoints(ema):
        config = replace(
            profile_config("cpu-demo", input_size=64, epochs=2), ema=ema, learning_rate=1e-2
        )
        folder = tmp_path / str(ema)
        train_model(store, folder, config, log=lambda _: None)
        first, second = (
            keras.saving.load_model(folder / "checkpoints" / f"epoch-0{epoch}.keras")
            .get_layer("malignant")
            .get_weights()
            for epoch in (1, 2)
        )
        return max(np.abs(a - b).max() for a, b in zip(first, second, strict=True))

    assert change_between_checkpoints(0.999999) < 1e-4
    assert change_between_checkpoints(None) > 1e-3


def test_split_is_reused_by_a_second_run(store, trained, tmp_path):
    _, model_dir = trained
    first = load_split(model_dir / "split.json")
    again = tmp_path / "again"
    again.mkdir()
    (again / "split.json").write_text((model_dir / "split.json").read_text())
    train_model(
        store,
        again,
        profile_config("cpu-demo", input_size=64, epochs=1, seed=99),
        log=lambda _: None,
    )
    assert load_split(again / "split.json") == first


def test_evaluate_writes_metrics_and_report(store, trained, tmp_path):
    _, model_dir = trained
    metrics = evaluate(store, model_dir, tmp_path / "report", n_bootstrap=50)
    for name in ("metrics.json", "patients.csv", "roc.png", "report.md", "curves.png"):
        assert (tmp_path / "report" / name).exists(), name
    assert metrics["patient"]["n"] >= 2 and 0 <= metrics["image"]["auc"] <= 1
    report = (tmp_path / "report" / "report.md").read_text()
    assert "DataTest_1 (paper) | 0.973" in report and "![ROC curve](roc.png)" in report


def test_evaluate_shows_heat_maps_of_misclassified_patients(store, trained, tmp_path):
    _, model_dir = trained
    # An image threshold no probability reaches: every malignant patient is voted benign.
    metrics = evaluate(store, model_dir, tmp_path / "report", n_bootstrap=20, image_threshold=1.0)
    shown = metrics["heatmaps"]["patients"]
    assert shown and metrics["heatmaps"]["method"] == "grad-cam"
    for paths in shown.values():
        assert 1 <= len(paths) <= 6
        assert all((tmp_path / "report" / p).exists() for p in paths)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "what the network looked at" in report and f"![]({paths[0]})" in report
    page = (tmp_path / "report" / "report.html").read_text()
    assert f'src="{paths[0]}"' in page and page.count("data:image/png;base64,") >= 5
    assert "DataTest_1 (paper)" in page and "class='wrong'" in page


def test_patient_table_applies_the_51_percent_vote():
    import numpy as np
    import pandas as pd

    meta = pd.DataFrame(
        {"patient_id": ["a", "a", "b", "b", "b"], "label": ["malignant"] * 2 + ["benign"] * 3}
    )
    table = patient_table(meta, np.array([0.9, 0.2, 0.7, 0.6, 0.1]))
    assert table.set_index("patient_id")["vote"].to_dict() == {"a": "benign", "b": "malignant"}
    assert table.set_index("patient_id")["n_malignant"].to_dict() == {"a": 1, "b": 2}


def test_vote_tradeoff_and_calibration_by_hand():
    import pandas as pd

    from renalflow.tasks.report import calibration, vote_tradeoff

    patients = pd.DataFrame(
        {"label": ["malignant", "malignant", "benign", "benign"],
         "fraction_malignant": [0.9, 0.4, 0.6, 0.1]}
    )  # fmt: skip
    table = vote_tradeoff(patients, np.array([0.0, 0.5, 0.95]))
    assert table["sensitivity"].tolist() == [1.0, 0.5, 0.0]
    assert table["specificity"].tolist() == [0.0, 0.5, 1.0]
    cal = calibration(np.array([0, 0, 1, 1]), np.array([0.05, 0.15, 0.85, 0.95]), bins=2)
    assert cal["observed"].tolist() == [0.0, 1.0] and cal["n"].tolist() == [2, 2]


def test_offline_imagenet_weights_end_in_one_line_and_leave_no_model_dir(
    store, tmp_path, monkeypatch
):
    """The paper profile asks Keras for ImageNet weights; a machine that cannot download
    them gets what to pass instead, and no half-written model directory."""
    from renalflow.tasks import model as model_module
    from renalflow.tasks.errors import ModelError
    from tests.factory import free_port

    monkeypatch.setattr(model_module, "IMAGENET_WEIGHTS", "renalflow-never-cached.h5")
    monkeypatch.setattr(
        model_module, "IMAGENET_WEIGHTS_URL", f"http://127.0.0.1:{free_port()}/weights.h5"
    )
    model_dir = tmp_path / "model"
    config = profile_config("paper", input_size=64, epochs=1)
    with pytest.raises(ModelError, match="cannot download the ImageNet weights") as info:
        train_model(store, model_dir, config, log=lambda _: None)
    assert "--weights PATH" in str(info.value) and "--weights none" in str(info.value)
    assert not model_dir.exists() and list(tmp_path.iterdir()) == []


def test_a_failed_retraining_keeps_the_model_it_would_have_replaced(store, trained, tmp_path):
    import shutil

    _, model_dir = trained
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    before = (copy / "model_version.txt").read_text()
    config = profile_config("paper", input_size=64, epochs=1, weights=str(tmp_path / "no.h5"))
    from renalflow.tasks.errors import ModelError

    with pytest.raises(ModelError, match=r"weights file .* does not exist"):
        train_model(store, copy, config, log=lambda _: None)
    assert (copy / "model_version.txt").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no leftovers


def test_evaluate_refuses_a_store_made_with_other_preprocessing(trained, tmp_path):
    from renalflow.tasks.errors import ModelError

    _, model_dir = trained
    other = build_store(tmp_path, patients=4, seed=6, size=32)  # another resize
    with pytest.raises(ModelError, match="holds slices made with preprocess_version") as info:
        evaluate(other, model_dir, tmp_path / "report")
    assert "ingest the archive again into a new store" in str(info.value)
    assert not (tmp_path / "report").exists()  # refused before any work


def test_a_one_class_validation_split_is_named_not_reported_as_auc_0():
    from renalflow.tasks.train import validation_warnings

    history = {"val_auc": [0.0, 0.0], "val_loss": [0.7, 0.6]}
    (note,) = validation_warnings(np.ones(30, np.int8), history, 2)
    assert note.startswith("every validation image is malignant: val_auc is meaningless")
    assert validation_warnings(np.array([0, 1, 1], np.int8), {"val_auc": [0.8]}, 1) == []
    assert "undefined" in validation_warnings(np.array([0, 1]), {"val_auc": [float("nan")]}, 1)[0]
