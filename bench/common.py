"""What the benchmark scripts share: the line that says which machine their figures
come from, their command line and scratch folder, and what both GPU benchmarks take and print.
Imported as `common` (each script runs as `python bench/NAME.py`, with bench/ first on
the path)."""

from __future__ import annotations

import argparse
import os
import platform
import tempfile


def machine() -> str:
    """The machine, as BENCHMARKS.md records it with every figure."""
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f} (other work "
        "on the machine skews every figure)"
    )


def script_parser(doc: str | None, workdir: str | None = None) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring as the help, line breaks kept, and
    with `workdir` its scratch folder option (`add_workdir`)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if workdir is not None:
        add_workdir(parser, workdir)
    return parser


def add_workdir(parser: argparse.ArgumentParser, name: str) -> None:
    """--workdir: the script's scratch folder, reused between runs."""
    parser.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), f"renalflow-bench-{name}"),
        help="scratch folder, reused between runs (default: %(default)s)",
    )


def add_gpu_options(parser: argparse.ArgumentParser) -> None:
    """The options both GPU benchmarks take: precision, and the slice store they read."""
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    parser.add_argument("--images", type=int, default=16384, help="slices in the generated store")
    parser.add_argument("--store", help="an existing slice store instead of a generated one")
    parser.add_argument("--size", type=int, default=224, help="image side (224 as the paper)")


def keras_precision(precision: str) -> str | None:
    """Prints the Keras version, its backend and the devices JAX sees; returns
    `--precision` as TrainConfig's mixed_precision (None: fp32)."""
    import keras

    print(
        f"keras {keras.__version__}, backend {keras.backend.backend()}, "
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus"
    )
    if keras.backend.backend() == "jax":
        import jax

        print(f"jax {jax.__version__}, devices: {jax.devices()}")
    return None if precision == "fp32" else precision
