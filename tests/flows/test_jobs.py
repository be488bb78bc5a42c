import pytest

from renalflow.flows.jobs import as_uri, preflight_ingest, preflight_score, train_config
from renalflow.tasks.errors import InputError
from renalflow.tasks.model import profile_config
from renalflow.tasks.params import IngestParams, ScoreParams, TrainParams


def test_train_options_left_unset_take_the_profiles_values():
    assert train_config(TrainParams(store="s", model_dir="m")) == profile_config("paper")
    demo = train_config(TrainParams(store="s", model_dir="m", profile="cpu-demo", epochs=3))
    assert demo == profile_config("cpu-demo", epochs=3)
    full = train_config(TrainParams(store="s", model_dir="m", profile="cpu-demo", region="full"))
    assert full.region is None
    selector = TrainParams(store="s", model_dir="m", profile="cpu-demo", task="selector")
    assert train_config(selector, selector.task).full_resolution
    half = selector.model_copy(update={"full_resolution": False})
    assert not train_config(half, half.task).full_resolution


def test_contradicting_train_settings_are_an_input_error():
    params = TrainParams(store="s", model_dir="m", schedule="cosine", decay_after=4)
    with pytest.raises(InputError, match="not with schedule cosine; see renalflow train --help"):
        train_config(params)


def test_local_paths_become_absolute_and_uris_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert as_uri("store") == str(tmp_path / "store")
    assert as_uri("s3://bucket/store") == "s3://bucket/store"


def test_preflight_checks_local_inputs_and_leaves_remote_ones_for_later(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        preflight_ingest(IngestParams(archive=str(tmp_path / "none"), store="s"), remote=False)
    # A remote archive is checked once credentials are loaded, not before.
    preflight_ingest(IngestParams(archive="s3://bucket/none", store="s"), remote=False)


def test_scoring_without_a_key_is_refused_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.delenv("RENALFLOW_PSEUDONYM_KEY", raising=False)
    params = ScoreParams(archive=str(tmp_path), model_dir=str(tmp_path), results="r")
    with pytest.raises(InputError, match="RENALFLOW_PSEUDONYM_KEY"):
        preflight_score(params, remote=False)
