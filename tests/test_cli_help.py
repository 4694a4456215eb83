"""Every `imgsynth ... --help` shows each option's help text whole: rich markup must not eat bracketed text."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from imgsynth.cli.app import app


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command below ``group`` (typer's click-like objects), with the words that invoke it."""
    found = [(path, group)]
    if hasattr(group, "commands"):  # a group (typer ships its own click, so no isinstance check)
        for name, sub in group.commands.items():
            found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def _flat(text: str) -> str:
    """Help text with rich's box borders and line wrapping removed, whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text)).strip()


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) or "imgsynth" for p, _ in COMMANDS])
def test_help_shows_every_help_text_whole(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=400, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    shown = _flat(result.output)
    for param in command.params:
        text = getattr(param, "help", None)
        if text and not getattr(param, "hidden", False):  # a former flag name still works but is not listed
            # `\[` is rich's escape for a literal bracket: the reader sees `[`.
            assert _flat(text.replace("\\[", "[")) in shown, (param.name, shown)
    assert " ." not in shown and "()" not in shown


def test_classify_help_states_the_library_defaults():
    from imgsynth.classifier import ClassifierConfig
    from imgsynth.cli.classify import LIBRARY_DEFAULTS

    defaults = ClassifierConfig()
    assert LIBRARY_DEFAULTS == {name: getattr(defaults, name) for name in LIBRARY_DEFAULTS}
