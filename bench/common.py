"""What the benchmark scripts share: the line that says which machine their figures
come from, and their scratch folder option. Imported as `common` (each script runs as
`python bench/NAME.py`, with bench/ first on the path)."""

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


def add_workdir(parser: argparse.ArgumentParser, name: str) -> None:
    """--workdir: the script's scratch folder, reused between runs."""
    parser.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), f"renalflow-bench-{name}"),
        help="scratch folder, reused between runs (default: %(default)s)",
    )
