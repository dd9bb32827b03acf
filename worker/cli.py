"""The ``jobtracker`` command line."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click

from models import DeliveryStatus, JobStatus
from worker.errors import ConfigError, EnqueueError, NotFoundError
from worker.providers.table import PROVIDERS
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
    from worker.enqueue import enqueue as store
    from worker.enqueue import validate

    settings = _settings()
    try:
        # Refuse bad input before touching the database.
        request = validate(
            kind,
            job_id,
            callback_url=callback_url,
            region=region,
            metadata=metadata,
            default_region=settings.region,
        )
        _ready_settings()
        job = store(request, settings)
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


# -- inspection ----------------------------------------------------------------------------------


class _Age(click.ParamType):
    """``30s``, ``10m``, ``2h``, ``3d``, ``1w``, ``1h30m``."""

    name = "AGE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from worker.inspection import parse_age

        if isinstance(value, timedelta):
            return value
        try:
            return parse_age(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Time(click.ParamType):
    """An age before now (``2h``) or an ISO-8601 time."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from models import utcnow
        from worker.inspection import parse_time

        if isinstance(value, datetime):
            return value
        try:
            return parse_time(str(value), now=utcnow())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


AGE = _Age()
TIME = _Time()
_JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
_LIMIT_OPTION = click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many."
)


def _read_settings() -> Settings:
    """Settings for a command that reads the database, which must already exist.

    Inspecting a SQLite file that is not there would create an empty one and show nothing, a
    confusing answer to "where are my jobs?": refuse instead, naming the file.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    settings = _settings()
    url = make_url(settings.database_url)
    database = url.database if url.get_backend_name() == "sqlite" else None
    if database and database != ":memory:" and not Path(database).exists():
        _fail(
            f"no database at {database}; set JOBTRACKER_DATABASE_URL "
            "(after `jobtracker demo`: JOBTRACKER_DATABASE_URL=sqlite:///jobtracker-demo.db)",
            2,
        )
    try:
        return _ready_settings()
    except SQLAlchemyError as exc:
        _fail(f"cannot read the database: {getattr(exc, 'orig', None) or exc}", 2)


def _now() -> datetime:
    from models import utcnow

    return utcnow()


@main.command()
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([*(s.value for s in JobStatus), "active", "terminal"]),
    help="Only jobs in this status (repeatable; active = pending/queued/running).",
)
@click.option(
    "--kind", "kinds", multiple=True, type=click.Choice(list(PROVIDERS)), help="Only this kind."
)
@click.option("--since", type=AGE, help="Only jobs created within this age (10m, 2h, 3d).")
@click.option("--older-than", type=AGE, help="Only jobs created longer ago than this.")
@_LIMIT_OPTION
@_JSON_OPTION
def jobs(
    statuses: tuple[str, ...],
    kinds: tuple[str, ...],
    since: timedelta | None,
    older_than: timedelta | None,
    limit: int,
    as_json: bool,
) -> None:
    """List tracked jobs, newest first."""
    from worker.db import session_scope
    from worker.inspection import list_jobs
    from worker.tables import jobs_table

    settings = _read_settings()
    now = _now()
    with session_scope(settings) as session:
        rows = [
            job.to_dict()
            for job in list_jobs(
                session,
                now=now,
                statuses=statuses,
                kinds=kinds,
                since=since,
                older_than=older_than,
                limit=limit,
            )
        ]
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no matching jobs", err=True)
        return
    click.echo(jobs_table(rows, now))
    if len(rows) == limit:
        click.echo(f"(the {limit} newest; use --limit for more)", err=True)


@main.command(short_help="Show one job with its history, callbacks and attempts.")
@click.argument("ref", nargs=-1, required=True, metavar="ID | JOB_ID | KIND JOB_ID")
@click.option("--region", help="The job's region, to tell apart one JobId in several regions.")
@_JSON_OPTION
def show(ref: tuple[str, ...], region: str | None, as_json: bool) -> None:
    """Show one job: its fields, its transition history, its callbacks and every attempt.

    ID is the tracked job's id (the first column of `jobtracker jobs`); JOB_ID is the provider's
    JobId, optionally after its KIND.
    """
    from worker.db import session_scope
    from worker.inspection import find_job, job_detail
    from worker.tables import job_page

    if len(ref) > 2:
        raise click.UsageError("give ID, JOB_ID, or KIND JOB_ID")
    if len(ref) == 2 and ref[0] not in PROVIDERS:
        raise click.BadParameter(
            f"unknown kind {ref[0]!r}: use one of {', '.join(PROVIDERS)}", param_hint="KIND"
        )
    settings = _read_settings()
    now = _now()
    try:
        with session_scope(settings) as session:
            detail = job_detail(session, find_job(session, ref, region=region))
    except NotFoundError as exc:
        _fail(str(exc), 1)
    if as_json:
        _print_json(detail)
    else:
        click.echo(job_page(detail, now))


@main.command(short_help="List callback messages and their delivery status.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in DeliveryStatus]),
    help="Only callbacks in this status (repeatable).",
)
@click.option("--job", type=int, help="Only the callbacks of this tracked job (its id).")
@_LIMIT_OPTION
@_JSON_OPTION
def deliveries(statuses: tuple[str, ...], job: int | None, limit: int, as_json: bool) -> None:
    """List callback messages (newest first); ID is the message's webhook-id."""
    from models import TrackedJob
    from worker.db import session_scope
    from worker.inspection import delivery_dict, list_deliveries
    from worker.tables import deliveries_table

    settings = _read_settings()
    now = _now()
    with session_scope(settings) as session:
        if job is not None and session.get(TrackedJob, job) is None:
            _fail(f"no tracked job with id {job}", 1)
        rows = [
            delivery_dict(d)
            for d in list_deliveries(session, statuses=statuses, job=job, limit=limit)
        ]
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no matching deliveries", err=True)
        return
    click.echo(deliveries_table(rows, now))
    if len(rows) == limit:
        click.echo(f"(the {limit} newest; use --limit for more)", err=True)


@main.command(short_help="Send a callback again (same message, same webhook-id).")
@click.argument("delivery_id", required=False)
@click.option(
    "--failed-since",
    type=TIME,
    help="Instead of one id: every callback that ended failed since TIME (2h, 3d, or ISO-8601).",
)
@_JSON_OPTION
def redeliver(delivery_id: str | None, failed_since: datetime | None, as_json: bool) -> None:
    """Send a callback again: a new attempt of the same message, with the same webhook-id.

    With DELIVERY_ID the attempt is made right away and its outcome printed (exit status 1 if it
    was not delivered). With --failed-since, the failed messages are made due again and the
    worker's next sweep sends them.
    """
    from worker.db import session_scope
    from worker.inspection import attempts_of, delivery_dict, get_delivery
    from worker.outbox import deliver_one, redeliver_failed
    from worker.outbox import redeliver as make_due

    if (delivery_id is None) == (failed_since is None):
        raise click.UsageError("give either a DELIVERY_ID or --failed-since TIME")
    settings = _read_settings()
    if failed_since is not None:
        ids = redeliver_failed(settings, failed_since)
        if as_json:
            _print_json({"since": failed_since.isoformat(), "redelivered": ids})
            return
        click.echo(
            f"{len(ids)} failed deliveries since {failed_since:%Y-%m-%d %H:%M:%S} UTC are due "
            "again; the worker's next sweep sends them" + (":" if ids else ".")
        )
        for one in ids:
            click.echo(f"  {one}")
        return

    assert delivery_id is not None
    try:
        make_due(settings, delivery_id)
    except NotFoundError as exc:
        _fail(str(exc), 1)
    status = deliver_one(delivery_id, settings)
    with session_scope(settings) as session:
        entry = delivery_dict(
            get_delivery(session, delivery_id), attempts=attempts_of(session, delivery_id)
        )
    if as_json:
        _print_json({"sent": status is not None, **entry})
    else:
        click.echo(_redelivery_line(entry, sent=status is not None))
    if status is not None and status != DeliveryStatus.DELIVERED.value:
        sys.exit(1)


def _redelivery_line(entry: dict[str, Any], *, sent: bool) -> str:
    from worker.tables import format_age

    head = f"{entry['id']} ({entry['event_type']} to {entry['url']})"
    if not sent:
        return f"{head}: due again; another sender holds it right now and will attempt it"
    last = entry["attempt_log"][-1]
    if last["status_code"] is not None:
        what = f"HTTP {last['status_code']} in {last['latency_ms']} ms"
    else:
        what = f"{last['error_class']}: {last['error_message']}"
    if entry["status"] == DeliveryStatus.DELIVERED.value:
        return f"{head}: attempt {entry['attempts']} delivered ({what})"
    if entry["status"] == DeliveryStatus.FAILED.value:
        return f"{head}: attempt {entry['attempts']} failed ({what}); no attempt left"
    wait = (datetime.fromisoformat(entry["next_attempt_at"]) - _now()).total_seconds()
    return (
        f"{head}: attempt {entry['attempts']} failed ({what}); next attempt in {format_age(wait)}"
    )


@main.command(short_help="Counts by kind and status, backlog, callbacks, providers.")
@_JSON_OPTION
def stats(as_json: bool) -> None:
    """Jobs by kind and status, oldest active jobs, polls per finished job, callbacks by status,
    and paused or throttled providers."""
    from worker.db import session_scope
    from worker.inspection import stats as collect
    from worker.tables import stats_page

    settings = _read_settings()
    with session_scope(settings) as session:
        result = collect(session, now=_now())
    if as_json:
        _print_json(result)
    else:
        click.echo(stats_page(result))


@main.command(short_help="A self-contained end-to-end demo (~30 s, no credentials).")
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
    import logging

    from worker.demo import run_demo

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


if __name__ == "__main__":  # pragma: no cover
    main()
