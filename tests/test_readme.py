"""README stays true: its two set-up commands come first and CI runs the second word for word; every
command, preset, job flag and exit code it should list is listed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inferkit.chart import presets
from inferkit.cli import EXIT_CODES, cli
from inferkit.config import run_fields

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _setup_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README, re.DOTALL)
    assert block and README.index("```bash") < README.index("\n", README.index("# inferkit")) + 3
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_two_setup_commands():
    run, test = _setup_commands()
    assert run.endswith(".venv/bin/inferkit run") and "torch==2.13.0" in run
    assert test.endswith(".venv/bin/python -m pytest") and "torch==2.13.0" in test


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == _setup_commands()[1]


def test_every_command_preset_flag_and_exit_code_is_documented():
    for command in cli.commands:
        assert f"inferkit {command}" in README, command
    for preset in presets():
        assert f"| `{preset}` |" in README, preset
    for name, _type, _help in run_fields():
        assert f"--{name.replace('_', '-')}" in README, name
    for code in re.findall(r"^\s+(\d+)\s", EXIT_CODES, re.MULTILINE):
        assert f"| {code} |" in README, code


@pytest.mark.parametrize("document", sorted(p.name for p in REPO.glob("*.md")))
def test_every_linked_file_exists(document):
    for target in re.findall(r"\]\(([^)#:]+)\)", (REPO / document).read_text()):
        assert (REPO / target).exists(), f"{document} links to {target}"
