"""A small labelled store and a tiny model trained on it, for the training and the
evaluation tests (each module trains its own, once)."""

import pytest

from renalflow.tasks.model import profile_config
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
