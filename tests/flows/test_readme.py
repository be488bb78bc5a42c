"""The README shows only what runs: its command reference is `--help`'s usage, its data
dictionary is tasks/results.COLUMN_DOCS, and every `renalflow` command in its shell
blocks parses into valid parameters.

`python tests/flows/test_readme.py --write` rewrites the command reference and the data
dictionary.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from renalflow.flows.cli import build_parser, command_reference, params_from_args
from renalflow.tasks.results import data_dictionary

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- commands:begin -->", "<!-- commands:end -->"
COLUMNS_BEGIN, COLUMNS_END = "<!-- columns:begin -->", "<!-- columns:end -->"
GUIDE_BEGIN, GUIDE_END = "<!-- guide:begin -->", "<!-- guide:end -->"


def reference_block() -> str:
    return f"{BEGIN}\n```text\n{command_reference()}```\n{END}"


def dictionary_block() -> str:
    """The data dictionary as a Markdown table (what `renalflow query --describe` prints)."""
    rows = [
        f"| `{r['column']}` | {r['tables']} | {r['meaning'].replace('|', '/')} |"
        for r in data_dictionary()
    ]
    table = "\n".join(["| column | tables | meaning |", "|---|---|---|", *rows])
    return f"{COLUMNS_BEGIN}\n{table}\n{COLUMNS_END}"


def _current_block(text: str, begin: str = BEGIN, end_marker: str = END) -> str:
    start, end = text.index(begin), text.index(end_marker) + len(end_marker)
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


def test_readme_data_dictionary_is_the_one_in_the_code():
    text = README.read_text()
    assert _current_block(text, COLUMNS_BEGIN, COLUMNS_END) == dictionary_block(), (
        "README's data dictionary differs from tasks/results.COLUMN_DOCS: run "
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


def test_the_epidemiologists_guide_runs_as_written(tmp_path, monkeypatch, capsys):
    """From an outcome spreadsheet to a table of agreement: every command of the guide,
    run as written, on a results table scored under the department's key."""
    from renalflow.flows.cli import main
    from tests.tasks.test_results import score_cohort
    from tests.tasks.test_score import KEY

    commands = shell_commands(_current_block(README.read_text(), GUIDE_BEGIN, GUIDE_END))
    assert [c.split()[1] for c in commands] == [
        "pseudonymise",
        "load-references",
        "cohort-report",
        "extract",
        "extract",
    ]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RENALFLOW_PSEUDONYM_KEY", KEY.decode())
    score_cohort(str(tmp_path / "R"), {"0042": 0.8, "0043": 0.2, "0044": 0.8, "0045": 0.2})
    (tmp_path / "outcomes.csv").write_text(
        "patient_id,outcome,surgery_date\n0042,malignant,2021-03-14\n0043,benign,2021-05-02\n"
        "0044,benign,2022-01-20\n0045,benign,2022-02-11\n"
    )
    for command in commands:
        assert main(shlex.split(command, comments=True)[1:]) == 0, command
    printed = capsys.readouterr().out
    assert "4 rows -> outcomes.pseudo.csv" in printed
    assert "(4 patient votes compared with a reference outcome)" in printed
    agreement = (tmp_path / "cohort" / "agreement.csv").read_text().splitlines()
    header, overall = agreement[0].split(","), agreement[1].split(",")
    row = dict(zip(header, overall, strict=False))
    assert (row["unit"], row["by"], row["tp"], row["fp"], row["tn"]) == (
        "patients", "all", "1", "1", "2"
    )  # fmt: skip
    for name in ("rows.parquet", "rows.csv", "manifest.json"):
        first, again = tmp_path / "table2" / name, tmp_path / "table2-check" / name
        assert first.read_bytes() == again.read_bytes(), name


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    text = README.read_text()
    text = text.replace(_current_block(text), reference_block())
    text = text.replace(_current_block(text, COLUMNS_BEGIN, COLUMNS_END), dictionary_block())
    README.write_text(text)
