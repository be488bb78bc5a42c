import pytest
from pydantic import ValidationError

from renalflow.tasks.config import (
    IMAGE_THRESHOLD,
    MIN_IMAGES,
    VOTE_THRESHOLD,
    Interpolation,
    PreprocessConfig,
    Profile,
)
from renalflow.tasks.params import (
    JOB_PARAMS,
    EvaluateParams,
    IngestParams,
    ScoreParams,
    TrainParams,
)


def test_every_command_has_one_model_with_a_summary_and_described_fields():
    commands = [model.command for model in JOB_PARAMS]
    assert len(commands) == len(set(commands))
    for model in JOB_PARAMS:
        assert model.summary
        for name, field in model.model_fields.items():
            assert field.description, f"{model.command}: {name} has no help text"


def test_ingest_defaults_are_the_preprocessing_owners():
    params = IngestParams(archive="a", store="s")
    assert params.preprocess_config() == PreprocessConfig()
    boxed = IngestParams(archive="a", store="s", interpolation="box", size=128)
    assert boxed.preprocess_config().interpolation is Interpolation.BOX
    assert boxed.preprocess_config().output_size == 128


def test_vote_defaults_are_the_configs():
    score = ScoreParams(archive="a", model_dir="m", results="r")
    assert (score.vote_threshold, score.image_threshold, score.min_images) == (
        VOTE_THRESHOLD,
        IMAGE_THRESHOLD,
        MIN_IMAGES,
    )
    evaluate = EvaluateParams(store="s", model_dir="m", out="o")
    assert evaluate.vote_threshold == VOTE_THRESHOLD


def test_a_typo_in_a_parameter_name_is_refused():
    with pytest.raises(ValidationError, match="vote_treshold"):
        ScoreParams.model_validate(
            {"archive": "a", "model_dir": "m", "results": "r", "vote_treshold": 0.6}
        )


def test_vocabularies_are_converted_on_entry():
    assert TrainParams(store="s", model_dir="m", profile="cpu-demo").profile is Profile.CPU_DEMO
    with pytest.raises(ValidationError, match="profile"):
        TrainParams(store="s", model_dir="m", profile="cpu_demo")


def test_exclusive_choices_are_refused_together():
    with pytest.raises(ValidationError, match="workers or dask_address"):
        IngestParams(archive="a", store="s", workers=2, dask_address="tcp://x:8786")
    with pytest.raises(ValidationError, match="split or cohort"):
        EvaluateParams(store="s", model_dir="m", out="o", split="test", cohort="external")
