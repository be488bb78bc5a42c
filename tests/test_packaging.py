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
import importlib.metadata, sys, renalflow.flows.cli, renalflow.tasks.config, tasks, flows
target = sys.argv[1]
assert renalflow.tasks.config.__file__.startswith(target), renalflow.tasks.config.__file__
assert renalflow.flows.cli.__file__.startswith(target), renalflow.flows.cli.__file__
assert tasks.OWNER == "another project" and flows.OWNER == "another project"
assert renalflow.flows.cli.build_parser().prog == "renalflow"
# The console script `renalflow` of the installed distribution resolves to the CLI in DIR.
(dist,) = [d for d in importlib.metadata.distributions(path=[target])
           if d.metadata["Name"] == "renalflow"]
(script,) = dist.entry_points.select(group="console_scripts", name="renalflow")
assert script.value == "renalflow.flows.cli:main", script.value
assert script.load() is renalflow.flows.cli.main
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
    assert {"s3", "web", "pacs", "hpc", "kubernetes", "jax"} <= set(extras)
    for requirement in project["dependencies"]:
        assert "<" in requirement, f"{requirement} has no upper bound"


def _pins(lock: str) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / lock).read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==", 1)
            pins[canonicalize_name(name.strip())] = version.split()[0].split(";")[0]
    return pins


@pytest.mark.parametrize(
    ("lock", "groups"),
    [("requirements.lock", ["s3", "web"]), ("requirements-dev.lock", ["s3", "web", "dev"])],
)
def test_the_locks_pin_every_direct_dependency_within_its_bounds(lock, groups):
    """pyproject's ranges hold the versions the tests run: a bound raised past the lock, or
    a dependency added without a pin, fails here."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins(lock)
    wanted = [*project["dependencies"]]
    for group in groups:
        wanted += project["optional-dependencies"][group]
    for line in wanted:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"platform_machine": "x86_64"}):
            continue  # the other architecture's TensorFlow
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in {lock}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {requirement.name}=={pins[name]}, outside pyproject's {line!r}"
        )


def test_the_gpu_lock_resolves_tensorflow_with_cuda_and_no_cpu_only_wheel():
    """GPU nodes install requirements-gpu.lock: TensorFlow with its CUDA wheels, never the
    CPU-only wheel that the base dependencies pin on x86_64 (which would leave a GPU
    node computing on its CPU)."""
    pins = _pins("requirements-gpu.lock")
    assert "tensorflow-cpu" not in pins
    assert pins["tensorflow"] == _pins("requirements.lock")["tensorflow-cpu"]
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12"} <= set(pins)
    # Everything else is the CPU lock's version, so both kinds of node run the same code.
    cpu = _pins("requirements.lock")
    assert {name: cpu[name] for name in cpu if name != "tensorflow-cpu"} == {
        name: pins[name] for name in cpu if name != "tensorflow-cpu"
    }
    dockerfile = (ROOT / "infra" / "docker" / "Dockerfile.gpu").read_text()
    assert "requirements-gpu.lock" in dockerfile and "tensorflow-cpu" not in dockerfile


def test_the_kubernetes_gpu_request_is_a_string():
    import yaml

    documents = list(
        yaml.safe_load_all((ROOT / "infra" / "kubernetes" / "dask-cluster.yaml").read_text())
    )
    limits = [
        container["resources"]["limits"]
        for doc in documents
        if doc and doc.get("kind") == "DaskWorkerGroup"
        for container in doc["spec"]["worker"]["spec"]["containers"]
    ]
    gpu = [limit["nvidia.com/gpu"] for limit in limits if "nvidia.com/gpu" in limit]
    assert gpu == ["1"]


def test_no_module_imports_another_modules_private_name():
    """A module's `_name` is its own: other modules (and the benchmarks) ask its public
    functions, so a module can change its insides without breaking another."""
    import ast

    found = []
    for path in sorted([*ROOT.glob("tasks/**/*.py"), *ROOT.glob("flows/**/*.py"),
                        *ROOT.glob("bench/*.py")]):  # fmt: skip
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("renalflow"):
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                ]
    assert not found, f"private names imported across modules: {found}"
