"""The README shows only what runs: its command reference is `--help`'s usage, and every
`renalflow` command in its shell blocks parses into valid parameters.

`python tests/flows/test_readme.py --write` rewrites the command reference.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from renalflow.flows.cli import build_parser, command_reference, params_from_args

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- commands:begin -->", "<!-- commands:end -->"


def reference_block() -> str:
    return f"{BEGIN}\n```text\n{command_reference()}```\n{END}"


def _current_block(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def shell_commands(text: str) -> list[str]:
    """The `renalflow ...` commands of the README's ```sh blocks, continuation lines and
    multi-line quotes joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        pending = ""
        for line in block.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # an open quote: the command goes on
                continue
            if pending.lstrip().startswith("renalflow "):
                commands.append(pending.strip())
            pending = ""
    return commands


def test_readme_command_reference_is_the_help_usage():
    text = README.read_text()
    assert _current_block(text) == reference_block(), (
        "README's command reference differs from `renalflow --help`: run "
        "`python tests/flows/test_readme.py --write`"
    )


COMMANDS = shell_commands(README.read_text())


def test_readme_shows_commands():
    assert len(COMMANDS) >= 12


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses_into_valid_parameters(command):
    argv = shlex.split(command, comments=True)[1:]
    if argv in (["--help"], ["--version"]):
        return
    params_from_args(build_parser().parse_args(argv))


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    text = README.read_text()
    README.write_text(text.replace(_current_block(text), reference_block()))
