"""The ``jobtracker`` command line."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click

from worker.errors import ConfigError, EnqueueError, JobTrackerError, NotFoundError
from worker.settings import Settings, get_settings


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"jobtracker: {message}", err=True)
    sys.exit(code)


def _settings() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        _fail(str(exc), 2)


def _ready_settings(*, quiet: bool = True) -> Settings:
    """Settings, with the logging set up and the database schema checked.

    Commands other than ``run`` print their result on stdout; their log shows warnings only.
    """
    from worker.logs import configure_logging
    from worker.migrate import ensure_schema

    settings = _settings()
    configure_logging(settings, level="WARNING" if quiet else None)
    try:
        ensure_schema(settings)
    except ConfigError as exc:
        _fail(str(exc), 2)
    return settings


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@click.group()
@click.version_option(package_name="jobtracker")
def main() -> None:
    """Track Tencent Cloud jobs and send signed completion callbacks."""


@main.command()
@click.option("--concurrency", type=click.IntRange(min=1), help="Worker threads.")
@click.option("--no-beat", is_flag=True, help="Run the worker only (beat runs elsewhere).")
def run(concurrency: int | None, no_beat: bool) -> None:
    """Run the worker and the beat scheduler until Ctrl-C / SIGTERM."""
    from worker.runner import run as run_worker

    settings = _ready_settings(quiet=False)
    sys.exit(run_worker(settings, concurrency=concurrency, beat=not no_beat))


@main.command()
@click.argument("kind")
@click.argument("job_id")
@click.option("--callback-url", help="Where to POST the completion callback.")
@click.option("--region", help="Tencent region (default: TENCENTCLOUD_REGION).")
@click.option("--metadata", help="A JSON object echoed back in the callback.")
def enqueue(
    kind: str, job_id: str, callback_url: str | None, region: str | None, metadata: str | None
) -> None:
    """Start tracking JOB_ID of KIND; print the tracked job as JSON."""
    from worker.enqueue import track, validate

    settings = _settings()
    try:
        # Refuse bad input before touching the database.
        validate(
            kind,
            job_id,
            callback_url=callback_url,
            region=region,
            metadata=metadata,
            default_region=settings.region,
        )
        _ready_settings()
        job = track(
            kind,
            job_id,
            callback_url=callback_url,
            region=region,
            metadata=metadata,
            settings=settings,
        )
    except EnqueueError as exc:
        _fail(str(exc), 2)
    _print_json(job)


@main.group()
def db() -> None:
    """Database schema migrations."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Upgrade the schema (to the newest revision by default)."""
    from worker.migrate import current_revision, upgrade

    settings = _settings()
    upgrade(revision, settings)
    click.echo(f"database at revision {current_revision(settings)}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Downgrade the schema to REVISION (``base`` drops every table)."""
    from worker.migrate import current_revision, downgrade

    settings = _settings()
    downgrade(revision, settings)
    click.echo(f"database at revision {current_revision(settings) or 'base'}")


@db.command("current")
def db_current() -> None:
    """Print the schema revision."""
    from worker.migrate import current_revision, head_revision

    current = current_revision(_settings())
    click.echo(f"{current or 'base'} (newest: {head_revision()})")


def _handle(error: JobTrackerError) -> NoReturn:
    _fail(str(error), 1 if isinstance(error, NotFoundError) else 2)


if __name__ == "__main__":  # pragma: no cover
    main()
