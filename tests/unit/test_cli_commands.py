"""The command line's lazy group: every listed command loads and runs its own help, and the
group's help lists them all without importing any of them."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from worker.cli import COMMANDS, main


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_listed_command_loads_and_shows_its_help(name: str) -> None:
    command = main.get_command(click.Context(main), name)
    assert isinstance(command, click.Command)
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: main {name}" in result.output


def test_the_group_help_lists_every_command_with_its_line() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name, entry in COMMANDS.items():
        assert name in result.output
        assert entry.short_help in " ".join(result.output.split())


def test_an_unknown_command_is_refused_by_name() -> None:
    result = CliRunner().invoke(main, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command 'frobnicate'" in result.output


def test_help_imports_no_command_module() -> None:
    """`jobtracker --help` must not pay for SQLAlchemy, Celery or FastAPI (start-up time)."""
    code = (
        "import sys; from worker.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('sqlalchemy', 'celery', 'fastapi', 'worker.flow', "
        "'worker.cli.inspect') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr
