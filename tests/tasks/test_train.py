"""A tiny end-to-end training and evaluation on a small synthetic store (cpu-demo profile)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from renalflow.tasks.model import profile_config
from renalflow.tasks.split import load_split
from renalflow.tasks.train import train_model


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
    config = profile_config("paper", input_size=64, epochs=1, select_epoch=1)
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
    config = profile_config(
        "paper", input_size=64, epochs=1, select_epoch=1, weights=str(tmp_path / "no.h5")
    )
    from renalflow.tasks.errors import ModelError

    with pytest.raises(ModelError, match=r"weights file .* does not exist"):
        train_model(store, copy, config, log=lambda _: None)
    assert (copy / "model_version.txt").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no leftovers


def test_a_one_class_validation_split_is_named_not_reported_as_auc_0():
    from renalflow.tasks.train import validation_warnings

    history = {"val_auc": [0.0, 0.0], "val_loss": [0.7, 0.6]}
    (note,) = validation_warnings(np.ones(30, np.int8), history, 2)
    assert note.startswith("every validation image is malignant: val_auc is meaningless")
    assert validation_warnings(np.array([0, 1, 1], np.int8), {"val_auc": [0.8]}, 1) == []
    assert "undefined" in validation_warnings(np.array([0, 1]), {"val_auc": [float("nan")]}, 1)[0]


def test_a_weights_file_with_another_checksum_is_refused_before_anything_is_written(
    store, tmp_path
):
    from renalflow.tasks.errors import ModelError

    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"x" * 1024)
    model_dir = tmp_path / "model"
    config = profile_config("paper", input_size=64, select_epoch=1, epochs=1, weights=str(weights))
    with pytest.raises(ModelError, match="is not Keras' published"):
        train_model(store, model_dir, config, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.h5"]


@pytest.mark.slow
def test_the_paper_profile_trains_end_to_end_and_keeps_the_epoch_5_model(store, tmp_path):
    """The paper's protocol at tiny size on the CPU: ResNet50V2 (random start: no
    download in tests), RMSprop 2e-5, constant rate, benign patients resampled, and the
    epoch-5 model kept whatever the validation loss says (correctness, not speed)."""
    import json

    config = profile_config("paper", input_size=64, weights="none", epochs=6)
    assert config.select_epoch == 5 and config.oversample_unit.value == "patient"
    model_dir = tmp_path / "paper"
    result = train_model(store, model_dir, config, log=lambda _: None)
    assert result.selected_epoch == 5 and len(result.history["loss"]) == 6
    kept = (model_dir / "model.keras").read_bytes()
    assert kept == (model_dir / "checkpoints" / "epoch-05.keras").read_bytes()
    recorded = json.loads((model_dir / "config.json").read_text())
    assert recorded["note"] == "paper profile"
    assert recorded["train"]["select_epoch"] == 5
    assert recorded["train"]["oversample_unit"] == "patient"
    assert recorded["train"]["learning_rate"] == 2e-5
    assert set(recorded["not_stated_by_the_paper"]) >= {"batch_size", "window", "interpolation"}
