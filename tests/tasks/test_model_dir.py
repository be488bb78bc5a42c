import json

import pytest

from renalflow.tasks.config import PreprocessConfig
from renalflow.tasks.errors import ModelError
from renalflow.tasks.model_dir import (
    PAPER_NOTE,
    ModelDir,
    has_model,
    load_model,
    model_version,
    profile_note,
    read_model_info,
)


def _fake_model(root, note=PAPER_NOTE, preprocess=None):
    where = ModelDir(root)
    root.mkdir(parents=True, exist_ok=True)
    where.model.write_bytes(b"not read by these tests")
    where.version.write_text("abc123\n")
    where.write_json(where.config, {"train": {"profile": "cpu-demo"}, "note": note})
    where.write_json(where.lineage, {"preprocess": preprocess or PreprocessConfig().to_dict()})
    return where


def test_model_info_reads_version_profile_and_preprocessing(tmp_path):
    _fake_model(tmp_path / "m", preprocess=PreprocessConfig(interpolation="box").to_dict())
    info = read_model_info(tmp_path / "m")
    assert (info.model_version, info.profile) == ("abc123", "cpu-demo")
    assert info.preprocess == PreprocessConfig(interpolation="box")
    assert has_model(tmp_path / "m") and model_version(tmp_path / "m") == "abc123"


def test_an_empty_folder_is_no_model_with_how_to_train_one(tmp_path):
    assert not has_model(tmp_path) and model_version(tmp_path) is None
    with pytest.raises(ModelError, match=r"holds no trained model.*renalflow train"):
        read_model_info(tmp_path)
    with pytest.raises(ModelError, match="holds no trained model"):
        load_model(tmp_path)


def test_only_a_non_paper_model_carries_a_note(tmp_path):
    _fake_model(tmp_path / "paper")
    _fake_model(tmp_path / "demo", note="cpu-demo profile: NOT the paper's model")
    assert profile_note(tmp_path / "paper") is None
    assert "NOT the paper's model" in (profile_note(tmp_path / "demo") or "")
    assert profile_note(tmp_path / "none") is None


def test_checkpoints_are_named_by_epoch(tmp_path):
    where = ModelDir(tmp_path)
    assert where.checkpoint(5).name == "epoch-05.keras"
    assert where.checkpoint("{epoch:02d}").name == "epoch-{epoch:02d}.keras"
    assert json.loads(json.dumps(str(where.split))).endswith("split.json")


def test_training_membership_is_the_split_under_the_results_key(tmp_path):
    from renalflow.tasks.config import InTraining
    from renalflow.tasks.model_dir import training_membership
    from renalflow.tasks.pseudonym import patient_pseudonym
    from renalflow.tasks.split import SplitConfig, save_split

    key = b"test-key-for-scoring-0123456789"
    assignment = {"P1": "train", "P2": "validation", "P3": "test"}
    labels = dict.fromkeys(assignment, "benign")
    assert training_membership(tmp_path, key) is None  # no split: unknown
    save_split(assignment, labels, SplitConfig(), ModelDir(tmp_path).split)
    assert training_membership(tmp_path, key) == {
        patient_pseudonym(key, "P1"): InTraining.TRAINING,
        patient_pseudonym(key, "P2"): InTraining.VALIDATION,
        patient_pseudonym(key, "P3"): InTraining.NONE,
    }


def test_an_evaluation_takes_the_models_split_or_another_models_or_a_cohort(tmp_path):
    from renalflow.tasks.errors import InputError
    from renalflow.tasks.model_dir import evaluated_set
    from renalflow.tasks.split import SplitConfig, save_split

    mine, other = tmp_path / "mine", tmp_path / "other"
    for root, assignment in (
        (mine, {"P1": "train", "P2": "test", "P3": "test"}),
        (other, {"P1": "test", "P2": "validation"}),
    ):
        root.mkdir()
        labels = dict.fromkeys(assignment, "benign")
        save_split(assignment, labels, SplitConfig(), ModelDir(root).split)
    test = evaluated_set(mine, None, None)
    assert (test.name, test.cohort, test.patients) == ("test split", "development", {"P2", "P3"})
    assert evaluated_set(mine, "validation", "development", split_from=other).patients == {"P2"}
    external = evaluated_set(mine, None, "hospital-b")
    assert (external.name, external.cohort, external.patients) == ("hospital-b", "hospital-b", None)
    with pytest.raises(InputError, match="has no 'validation' patients"):
        evaluated_set(mine, "validation", None)
