"""`imgsynth --help` groups commands by workflow, and every command's help ends with an example that parses."""

from __future__ import annotations

import re
import shlex

import pytest
import typer
from typer.testing import CliRunner

from imgsynth.cli.app import EXAMPLES, WORKFLOW, app

PANELS = ["Data", "Generate", "Evaluate", "Experiment", "Provenance"]
ROOT = typer.main.get_command(app)


def _help(*words: str) -> str:
    result = CliRunner().invoke(app, [*words, "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_root_help_lists_panels_in_workflow_order_with_their_commands():
    text = _help()
    titles = re.findall(r"╭─ (\w+) ─", text)
    assert titles == ["Options", *PANELS]
    # each panel's block holds its commands, in order
    blocks = re.split(r"╭─ \w+ ─+╮", text)[2:]
    for panel, block in zip(PANELS, blocks):
        listed = re.findall(r"^│ (\S+)\s", block, flags=re.M)
        assert listed == list(WORKFLOW[panel]), (panel, listed)
    assert set(ROOT.commands) == {name for names in WORKFLOW.values() for name in names}


def _command(words: list[str]):
    command = ROOT
    for word in words:
        command = command.commands[word]
    return command


@pytest.mark.parametrize("path", sorted(EXAMPLES))
def test_every_command_help_ends_with_an_example_whose_flags_exist(path):
    words = path.split()
    assert f"Example: {EXAMPLES[path]}" in re.sub(r"\s+", " ", _help(*words))
    argv = shlex.split(EXAMPLES[path])
    assert argv[0] == "imgsynth"
    command = _command(argv[1:1 + len(words)])
    if hasattr(command, "commands"):  # a group's example calls one of its commands
        command = command.commands[argv[1 + len(words)]]
        words = [*words, argv[1 + len(words)]]
    flags = {opt for param in command.params for opt in getattr(param, "opts", [])}
    used = [a.split("=")[0] for a in argv[1 + len(words):] if a.startswith("--")]
    assert set(used) <= flags, (path, set(used) - flags)


def test_every_command_has_an_example():
    expected = set()
    for name, command in ROOT.commands.items():
        expected.add(name)
        for sub in getattr(command, "commands", {}):
            expected.add(f"{name} {sub}")
    assert expected <= set(EXAMPLES), expected - set(EXAMPLES)
