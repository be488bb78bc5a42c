from dataclasses import dataclass

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
    JobParams,
    ScoreParams,
    SynthParams,
    TrainParams,
    config_from,
)
from renalflow.tasks.score import ScoreConfig
from renalflow.tasks.selector import SelectorTraining
from renalflow.tasks.synth import SynthConfig


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


def test_each_job_config_takes_every_option_of_its_parameters():
    synth = SynthParams(out="o", patients=3, seed=4, chest_share=0.2, min_study_slices=30)
    assert synth.synth_config() == SynthConfig(
        patients=3, seed=4, chest_share=0.2, study_slices=(30, SynthConfig().study_slices[1])
    )
    score = ScoreParams(
        archive="a", model_dir="m", results="r", vote_threshold=0.6, explain=True, min_images=3
    )
    assert score.score_config() == ScoreConfig(vote_threshold=0.6, explain=True, min_images=3)
    train = TrainParams(store="s", model_dir="m", hard_negative_share=0.5)
    assert train.selector_training() == SelectorTraining(hard_negative_share=0.5)


def test_a_config_field_without_a_parameter_fails_instead_of_keeping_its_default():
    @dataclass(frozen=True)
    class Config:
        seed: int = 0
        new_rule: float = 0.5

    class Params(JobParams):
        seed: int = 7

    with pytest.raises(TypeError, match=r"\['new_rule'\] have no parameter in Params"):
        config_from(Params(), Config)
    assert config_from(Params(), Config, defaults=("new_rule",)) == Config(seed=7)
    assert config_from(Params(), Config, new_rule=0.9) == Config(seed=7, new_rule=0.9)


def test_shares_outside_0_to_1_are_refused():
    with pytest.raises(ValidationError, match="chest_share"):
        SynthParams(out="o", chest_share=1.5)
    with pytest.raises(ValidationError, match="benign_fraction"):
        SynthParams(out="o", benign_fraction=-0.1)
