"""renalflow installs under its own name: a project with top-level `tasks` and `flows`
packages can share an environment with it."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).with_name("uv")

CHECK = """
import importlib.util, sys, renalflow.flows.cli, renalflow.tasks.config, tasks, flows
target = sys.argv[1]
assert renalflow.tasks.config.__file__.startswith(target), renalflow.tasks.config.__file__
assert renalflow.flows.cli.__file__.startswith(target), renalflow.flows.cli.__file__
assert tasks.OWNER == "another project" and flows.OWNER == "another project"
assert renalflow.flows.cli.build_parser().prog == "renalflow"
print("ok")
"""


@pytest.mark.slow
def test_installs_beside_packages_named_tasks_and_flows(tmp_path):
    if not UV.exists():
        pytest.skip("uv is installed by the Makefile next to the venv's python")
    target = tmp_path / "site"
    subprocess.run(
        [str(UV), "pip", "install", "--python", sys.executable, "--no-deps", "--quiet",
         "--target", str(target), str(ROOT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    other = tmp_path / "other"
    for name in ("tasks", "flows"):
        (other / name).mkdir(parents=True)
        (other / name / "__init__.py").write_text('OWNER = "another project"\n')
    assert not (target / "tasks").exists() and not (target / "flows").exists()
    assert (target / "renalflow" / "tasks" / "config.py").exists()
    templates = ROOT / "tasks" / "report" / "templates"
    if templates.is_dir():
        for template in templates.iterdir():
            assert (
                target / "renalflow" / "tasks" / "report" / "templates" / template.name
            ).exists()
    # The other project's packages come first on the path: renalflow must not care.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(other), str(target)])}
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(target)],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


def test_console_script_and_extras_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"renalflow": "renalflow.flows.cli:main"}
    extras = project["optional-dependencies"]
    assert {"s3", "web", "hpc", "kubernetes", "jax"} <= set(extras)
    for requirement in project["dependencies"]:
        assert "<" in requirement, f"{requirement} has no upper bound"


def test_every_direct_dependency_is_pinned_in_the_lock():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {
        line.split("==")[0].lower()
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line
    }
    wanted = [*project["dependencies"], *project["optional-dependencies"]["s3"],
              *project["optional-dependencies"]["web"]]  # fmt: skip
    for requirement in wanted:
        name = requirement.split(";")[0].split("[")[0].split(">")[0].split("<")[0].strip()
        if "platform_machine != 'x86_64'" in requirement:
            continue  # the other architecture's TensorFlow
        assert name.lower() in pinned, f"{name} is not pinned in requirements.lock"
