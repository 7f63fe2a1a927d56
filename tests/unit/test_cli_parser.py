"""One rule for `-c` in every command: before the command, or after any word of it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from stemd.cli.app import build_parser

# each command as a user types it, with what it needs besides -c
COMMANDS: dict[tuple[str, ...], list[str]] = {
    ("run",): [],
    ("check",): [],
    ("separate",): ["song.mp3"],
    ("status",): [],
    ("retry",): ["--failed"],
    ("dismiss",): ["--failed"],
    ("models", "list"): [],
    ("models", "fetch"): ["htdemucs"],
    ("models", "export"): [],
    ("token", "new"): [],
    ("token", "show"): [],
    ("ping",): [],
    ("install-service",): [],
}


def leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> set[tuple[str, ...]]:
    """Every command path the parser knows, down to the last subcommand."""
    found: set[tuple[str, ...]] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found |= leaf_commands(child, (*path, name))
    return found or {path}


def test_the_table_names_every_command() -> None:
    assert leaf_commands(build_parser()) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=" ".join)
def test_config_is_taken_before_and_after_the_command(command: tuple[str, ...]) -> None:
    rest = COMMANDS[command]
    parser = build_parser()
    before = parser.parse_args(["-c", "a.yaml", *command, *rest])
    after = parser.parse_args([*command, *rest, "-c", "b.yaml"])
    assert before.config == Path("a.yaml")
    assert after.config == Path("b.yaml")
    if len(command) > 1:  # between the words of a command too: `models -c x list`
        between = parser.parse_args([command[0], "-c", "m.yaml", *command[1:], *rest])
        assert between.config == Path("m.yaml")
