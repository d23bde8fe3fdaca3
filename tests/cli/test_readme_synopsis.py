"""The README's command synopses list every option each command's `--help` shows."""

from __future__ import annotations

import re
from pathlib import Path

import click

from prefkit.cli import build_cli

README = Path(__file__).resolve().parents[2] / "README.md"


def _synopsis() -> str:
    text = README.read_text()
    start = text.index("## Command line")
    block = text[start:].split("```")[1]
    assert "prefkit run RECIPE" in block
    return block


def _entry(block: str, name: str) -> str:
    """`prefkit NAME ...` and its indented continuation lines."""
    at = block.index(f"prefkit {name} ")
    following = re.search(r"\nprefkit ", block[at:])
    return block[at: at + following.start()] if following else block[at:]


def test_every_option_is_in_the_synopsis(registry):
    block = _synopsis()
    group = build_cli(lambda: registry)
    missing = []
    for name, command in [("", group), *sorted(group.commands.items())]:
        text = block if not name else _entry(block, name)
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                if not any(opt in text for opt in param.opts):
                    missing.append(f"{name or 'prefkit'} {param.opts[0]}")
    assert missing == []
