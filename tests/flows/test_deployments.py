"""infra/prefect.yaml declares the same jobs `renalflow serve` registers."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from renalflow.flows.deployments import NIGHTLY_CRON, local_timezone

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_entrypoints_and_parameters_match_the_flows():
    spec = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
    seen = set()
    for deployment in spec["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        accepted = set(flow.parameters.properties)
        assert set(deployment["parameters"]) <= accepted, deployment["name"]
        assert set(flow.parameters.required or []) <= set(deployment["parameters"])
        seen.add(f"{flow.name}/{deployment['name']}")
        if flow.name == "renalflow-score":
            assert deployment["schedules"][0]["cron"] == NIGHTLY_CRON
            assert deployment["concurrency_limit"] == 1
    assert seen == {
        "renalflow-score/nightly",
        "renalflow-ingest/on-demand",
        "renalflow-train/on-demand",
    }


def test_local_timezone_is_an_iana_name(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Copenhagen")
    assert local_timezone() == "Europe/Copenhagen"
    monkeypatch.delenv("TZ")
    assert local_timezone()
