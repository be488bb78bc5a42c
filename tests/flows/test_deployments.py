"""One set of options for every door: the CLI, the deployments and infra/prefect.yaml
offer exactly the fields of each job's parameter model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from renalflow.flows.cli import build_parser, option_name
from renalflow.flows.deployments import NIGHTLY_CRON, build_deployments, local_timezone
from renalflow.flows.jobs import JOBS
from renalflow.tasks.params import JOB_PARAMS, ServeParams

ROOT = Path(__file__).resolve().parents[2]


def _subparser(command: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command]


def _cli_fields(command: str) -> set[str]:
    common = {"help", "verbose", "debug"}
    return {a.dest for a in _subparser(command)._actions} - common


@pytest.mark.parametrize("model", JOB_PARAMS, ids=lambda m: m.command)
def test_cli_offers_every_field_and_nothing_else(model):
    assert _cli_fields(model.command) == set(model.model_fields)
    helptext = _subparser(model.command).format_help()
    for name, field in model.model_fields.items():
        if not (field.json_schema_extra or {}).get("positional"):
            assert option_name(name) in helptext


@pytest.mark.parametrize("model", list(JOBS), ids=lambda m: m.command)
def test_each_job_flow_takes_its_whole_model(model):
    schema = JOBS[model].parameters.model_dump()
    assert list(schema["properties"]) == ["params"]
    definition = schema["definitions"][model.__name__]
    assert set(definition["properties"]) == set(model.model_fields)


def test_prefect_yaml_sets_only_fields_of_the_models_and_every_required_one():
    spec = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
    by_flow = {flow.name: model for model, flow in JOBS.items()}
    seen = set()
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        model = by_flow[flow.name]
        given = deployment["parameters"]["params"]
        assert set(given) <= set(model.model_fields), deployment["name"]
        required = {n for n, f in model.model_fields.items() if f.is_required()}
        assert required <= set(given), deployment["name"]
        model.model_validate(given)  # the values are valid, not only the names
        seen.add(f"{flow.name}/{deployment['name']}")
        if flow.name == "renalflow-score":
            assert deployment["schedules"][0]["cron"] == NIGHTLY_CRON
            assert deployment["concurrency_limit"] == 1
    assert seen == {
        "renalflow-score/nightly",
        "renalflow-ingest/on-demand",
        "renalflow-train/on-demand",
        "renalflow-pipeline/on-demand",
    }


def test_serve_builds_the_same_jobs_with_model_parameters(tmp_path):
    params = ServeParams(
        archive=str(tmp_path / "a"),
        model_dir=str(tmp_path / "m"),
        results=str(tmp_path / "r"),
        workers=2,
        cron="30 1 * * *",
        timezone="Europe/Copenhagen",
    )
    score, ingest, train, pipeline = build_deployments(params)
    assert score.parameters["params"]["archive"] == params.archive
    assert score.parameters["params"]["workers"] == 2
    assert ingest.parameters["params"]["store"] == str(tmp_path / "r") + ".slices"
    assert train.parameters["params"]["model_dir"] == params.model_dir
    assert score.schedules[0].schedule.cron == "30 1 * * *"
    assert pipeline.parameters["params"]["results"] == params.results
    assert pipeline.parameters["params"]["store"] == str(tmp_path / "r") + ".slices"
    for deployment, model in zip((score, ingest), (JOB_PARAMS[4], JOB_PARAMS[1]), strict=True):
        model.model_validate(deployment.parameters["params"])


def test_local_timezone_is_an_iana_name(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Copenhagen")
    assert local_timezone() == "Europe/Copenhagen"
    monkeypatch.delenv("TZ")
    assert local_timezone()


def test_scheduled_scoring_follows_the_production_alias(tmp_path):
    params = ServeParams(
        archive=str(tmp_path / "a"), model_alias="production", results=str(tmp_path / "r")
    )
    score = build_deployments(params)[0]
    assert score.parameters["params"]["model_alias"] == "production"
    assert score.parameters["params"]["model_dir"] is None
