"""What this process computes on: the Keras backend, its devices and the versions in use
(`renalflow doctor`, each model's environment.json, the `--device gpu` check)."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from renalflow.tasks.errors import InputError

PACKAGES = ("renalflow", "keras", "tensorflow", "tensorflow-cpu", "jax", "numpy", "prefect", "dask")
"""Distributions whose versions `renalflow doctor` prints (absent ones are said so)."""


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Backend, devices (their names: a GPU shows as .../GPU:0, cuda:0 or gpu), host and
    versions. Loads Keras and its backend (seconds)."""
    import keras  # heavy (seconds): only the processes that ask load it
    import numpy as np

    env: dict[str, Any] = {
        "keras_backend": keras.backend.backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "numpy": np.__version__,
        "pid": os.getpid(),
        "host": platform.node(),
        "packages": {name: _installed(name) for name in PACKAGES},
    }
    if env["keras_backend"] == "tensorflow":
        import tensorflow as tf

        env["tensorflow"] = tf.__version__
        env["built_with_cuda"] = bool(tf.test.is_built_with_cuda())
        env["devices"] = [d.name for d in tf.config.list_logical_devices()]
    elif env["keras_backend"] == "jax":
        import jax

        env["jax"] = jax.__version__
        env["devices"] = [f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices()]
    else:
        env["devices"] = []
    return env


def gpu_devices(env: dict[str, Any] | None = None) -> list[str]:
    """The GPU devices of `env` (this process's when not given)."""
    env = env if env is not None else environment()
    return [d for d in env.get("devices", []) if "gpu" in d.lower() or "cuda" in d.lower()]


def require_gpu(where: str) -> list[str]:
    """This process's GPU devices; an InputError in one line when it sees none (no
    silent fall back to the CPU)."""
    env = environment()
    found = gpu_devices(env)
    if not found:
        cpu_only = env["packages"].get("tensorflow-cpu")
        hint = (
            f"tensorflow-cpu {cpu_only} is installed: install from requirements-gpu.lock"
            if cpu_only
            else "check the NVIDIA driver and CUDA_VISIBLE_DEVICES (`renalflow doctor`)"
        )
        raise InputError(
            f"--device gpu: {where} sees no GPU (Keras backend {env['keras_backend']}, devices "
            f"{', '.join(env['devices']) or 'none'}); {hint}, give --dask-address of a "
            "cluster with GPU workers, or --device cpu"
        )
    return found


def format_environment(env: dict[str, Any]) -> str:
    """`renalflow doctor`'s text."""
    gpus = ", ".join(gpu_devices(env)) or "none: training and scoring run on the CPU"
    chosen = os.environ.get("KERAS_BACKEND", "")
    lines = [
        f"keras backend  {env['keras_backend']} (KERAS_BACKEND={chosen})",
        f"devices        {', '.join(env['devices']) or 'none'}",
        f"GPUs           {gpus}",
    ]
    if "built_with_cuda" in env:
        lines.append(f"tensorflow     built with CUDA: {'yes' if env['built_with_cuda'] else 'no'}")
    lines.append(f"python         {env['python']} on {env['machine']} ({env['host']})")
    for name, found in env["packages"].items():
        lines.append(f"{name:<14} {found or 'not installed'}")
    return "\n".join(lines)
