"""The ``jobtracker`` command line: one group, its commands in the modules beside this one.

Each command's module is imported only when that command runs, so ``jobtracker --help`` (and any
command that needs neither the database nor Celery) starts without loading them: the list below
carries each command's one-line help.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import click


@dataclass(frozen=True)
class Entry:
    #: ``module:attribute`` of the click command.
    target: str
    #: The line ``jobtracker --help`` shows for it.
    short_help: str


COMMANDS: dict[str, Entry] = {
    "run": Entry("worker.cli.run:run", "Run the worker and the beat scheduler."),
    "enqueue": Entry("worker.cli.enqueue:enqueue", "Track a job: KIND JOB_ID."),
    "jobs": Entry("worker.cli.inspect:jobs", "List tracked jobs, newest first."),
    "show": Entry(
        "worker.cli.inspect:show", "Show one job with its history, callbacks and attempts."
    ),
    "deliveries": Entry(
        "worker.cli.inspect:deliveries", "List callback messages and their delivery status."
    ),
    "breakers": Entry(
        "worker.cli.inspect:breakers", "Callback destinations that time out, and their breakers."
    ),
    "redeliver": Entry(
        "worker.cli.inspect:redeliver", "Send a callback again (same message, same webhook-id)."
    ),
    "stats": Entry(
        "worker.cli.inspect:stats", "Counts by kind and status, backlog, callbacks, providers."
    ),
    "prune": Entry("worker.cli.prune:prune", "Remove finished jobs older than the retention."),
    "db": Entry("worker.cli.run:db", "Database schema migrations."),
    "settings": Entry(
        "worker.cli.settings:settings", "Every setting: its value here, default and meaning."
    ),
    "api": Entry("worker.cli.api:api", "Serve the service API over HTTP."),
    "clients": Entry("worker.cli.clients:clients", "Manage the service API's clients."),
    "demo": Entry(
        "worker.cli.run:demo", "A self-contained end-to-end demo (~30 s, no credentials)."
    ),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when they run (click's "lazily loading subcommands"),
    and whose help lists them from :data:`COMMANDS` without importing any."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, _, attribute = entry.target.partition(":")
        # The edge is by name: loading every command's dependencies up front is the start-up
        # cost this group exists to avoid (tests/unit/test_cli_commands.py loads each one).
        command: Any = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command), entry.target
        command.short_help = entry.short_help
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry.short_help) for name, entry in COMMANDS.items()])


@click.group(cls=LazyGroup)
@click.version_option(package_name="jobtracker")
def main() -> None:
    """Track Tencent Cloud jobs and send signed completion callbacks."""


__all__ = ["main"]
