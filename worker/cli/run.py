"""``jobtracker run``, ``jobtracker db ...`` and ``jobtracker demo``: running the tracker."""

from __future__ import annotations

import logging
import sys

import click

from worker.cli.common import ready_settings, settings_or_exit
from worker.errors import ConfigError
from worker.runtime import migrate
from worker.runtime.runner import run as run_worker
from worker.settings import Settings


@click.command()
@click.option("--concurrency", type=click.IntRange(min=1), help="Worker threads.")
@click.option("--no-beat", is_flag=True, help="Run the worker only (beat runs elsewhere).")
def run(concurrency: int | None, no_beat: bool) -> None:
    """Run the worker and the beat scheduler until Ctrl-C / SIGTERM."""
    settings = ready_settings(quiet=False)
    sys.exit(run_worker(settings, concurrency=concurrency, beat=not no_beat))


@click.group()
def db() -> None:
    """Database schema migrations."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Upgrade the schema (to the newest revision by default)."""
    settings = settings_or_exit()
    migrate.upgrade(revision, settings)
    click.echo(f"database at revision {migrate.current_revision(settings)}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Downgrade the schema to REVISION (``base`` drops every table)."""
    settings = settings_or_exit()
    migrate.downgrade(revision, settings)
    click.echo(f"database at revision {migrate.current_revision(settings) or 'base'}")


@db.command("current")
def db_current() -> None:
    """Print the schema revision."""
    current = migrate.current_revision(settings_or_exit())
    click.echo(f"{current or 'base'} (newest: {migrate.head_revision()})")


@click.command()
@click.option(
    "--database-url",
    help="Keep the demo's jobs in this database (default: ./jobtracker-demo.db, replaced).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=5),
    default=90.0,
    show_default=True,
    help="Give up after this many seconds.",
)
@click.option(
    "--live/--plain",
    default=None,
    help="A refreshing table, or one line per change (default: live on a terminal).",
)
def demo(database_url: str | None, timeout: float, live: bool | None) -> None:
    """Watch jobtracker track a dozen simulated jobs end to end, in about half a minute.

    Starts a fake Tencent API, a webhook receiver that verifies signatures and the tracker
    (`jobtracker run`), all on loopback with no credentials; enqueues jobs that succeed, fail,
    are not found, get throttled, answer slowly, are canceled or expire, for both kinds; shows
    their statuses and callbacks live, then a summary and how to inspect the results.
    """
    # The demo is the one product module that imports worker.devtools (the simulator, the
    # receiver): only this command needs that equipment, so nothing else loads it.
    from worker.cli.demo import run_demo

    if database_url is not None:
        try:
            Settings.from_env({"JOBTRACKER_DATABASE_URL": database_url})
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--database-url") from None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = run_demo(database_url=database_url, timeout_s=timeout, live=live)
    except KeyboardInterrupt:
        click.echo("\ndemo interrupted", err=True)
        code = 130
    sys.exit(code)
