"""``jobtracker jobs / show / deliveries / redeliver / stats``: what operators ask the database.

The queries are :mod:`worker.inspection.queries`'s, the text rendering
:mod:`worker.cli.tables`'; every command also prints ``--json``, the same dicts.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from typing import Any

import click

from jobtracker.models import DeliveryStatus, JobStatus, TrackedJob
from worker import clock
from worker.catalogue.table import PROVIDERS
from worker.cli.common import (
    AGE,
    JSON_OPTION,
    LIMIT_OPTION,
    TIME,
    TimeArg,
    fail,
    print_json,
    read_settings,
)
from worker.cli.tables import (
    breakers_table,
    deliveries_table,
    format_age,
    job_page,
    jobs_table,
    stats_page,
)
from worker.db import session_scope
from worker.errors import NotFoundError
from worker.flow.deliver import deliver_one, redeliver_failed
from worker.flow.deliver import redeliver as make_due
from worker.inspection.queries import (
    attempts_of,
    durations,
    find_job,
    get_delivery,
    job_detail,
    list_breakers,
    list_deliveries,
    list_jobs,
)
from worker.inspection.queries import stats as collect


@click.command()
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
@LIMIT_OPTION
@JSON_OPTION
def jobs(
    statuses: tuple[str, ...],
    kinds: tuple[str, ...],
    since: timedelta | None,
    older_than: timedelta | None,
    limit: int,
    as_json: bool,
) -> None:
    """List tracked jobs, newest first."""

    settings = read_settings()
    now = clock.now(settings)
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
        print_json(rows)
        return
    if not rows:
        click.echo("no matching jobs", err=True)
        return
    click.echo(jobs_table(rows, now))
    if len(rows) == limit:
        click.echo(f"(the {limit} newest; use --limit for more)", err=True)


@click.command()
@click.argument("ref", nargs=-1, required=True, metavar="ID | JOB_ID | KIND JOB_ID")
@click.option("--region", help="The job's region, to tell apart one JobId in several regions.")
@JSON_OPTION
def show(ref: tuple[str, ...], region: str | None, as_json: bool) -> None:
    """Show one job: its fields, its transition history, its callbacks and every attempt.

    ID is the tracked job's id (the first column of `jobtracker jobs`); JOB_ID is the provider's
    JobId, optionally after its KIND.
    """

    if len(ref) > 2:
        raise click.UsageError("give ID, JOB_ID, or KIND JOB_ID")
    if len(ref) == 2 and ref[0] not in PROVIDERS:
        raise click.BadParameter(
            f"unknown kind {ref[0]!r}: use one of {', '.join(PROVIDERS)}", param_hint="KIND"
        )
    settings = read_settings()
    now = clock.now(settings)
    try:
        with session_scope(settings) as session:
            detail = job_detail(session, find_job(session, ref, region=region))
    except NotFoundError as exc:
        fail(str(exc), 1)
    if as_json:
        print_json(detail)
    else:
        click.echo(job_page(detail, now))


@click.command()
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in DeliveryStatus]),
    help="Only callbacks in this status (repeatable).",
)
@click.option("--job", type=int, help="Only the callbacks of this tracked job (its id).")
@LIMIT_OPTION
@JSON_OPTION
def deliveries(statuses: tuple[str, ...], job: int | None, limit: int, as_json: bool) -> None:
    """List callback messages (newest first); ID is the message's webhook-id."""

    settings = read_settings()
    now = clock.now(settings)
    with session_scope(settings) as session:
        if job is not None and session.get(TrackedJob, job) is None:
            fail(f"no tracked job with id {job}", 1)
        rows = [
            d.to_dict() for d in list_deliveries(session, statuses=statuses, job=job, limit=limit)
        ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no matching deliveries", err=True)
        return
    click.echo(deliveries_table(rows, now))
    if len(rows) == limit:
        click.echo(f"(the {limit} newest; use --limit for more)", err=True)


@click.command()
@click.option("--open", "open_only", is_flag=True, help="Only destinations whose breaker is open.")
@JSON_OPTION
def breakers(open_only: bool, as_json: bool) -> None:
    """Callback destinations that time out: their circuit breaker, open or counting.

    A breaker opens after 5 timeouts in a row; while it is open, the messages to that
    destination wait (no attempt is made or counted) and one probe goes every 30 s. Any answer
    closes it and removes the row.
    """
    settings = read_settings()
    now = clock.now(settings)
    with session_scope(settings) as session:
        rows = list_breakers(session, open_only=open_only)
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no callback destination is timing out", err=True)
        return
    click.echo(breakers_table(rows, now))


@click.command()
@click.argument("delivery_id", required=False)
@click.option(
    "--failed-since",
    "failed_since_arg",
    type=TIME,
    help="Instead of one id: every callback that ended failed since TIME (2h, 3d, or ISO-8601).",
)
@JSON_OPTION
def redeliver(delivery_id: str | None, failed_since_arg: TimeArg | None, as_json: bool) -> None:
    """Send a callback again: a new attempt of the same message, with the same webhook-id.

    With DELIVERY_ID the attempt is made right away and its outcome printed (exit status 1 if it
    was not delivered). With --failed-since, the failed messages are made due again and the
    worker's next sweep sends them.
    """

    if (delivery_id is None) == (failed_since_arg is None):
        raise click.UsageError("give either a DELIVERY_ID or --failed-since TIME")
    settings = read_settings()
    if failed_since_arg is not None:
        failed_since = failed_since_arg.at(clock.now(settings))
        ids = redeliver_failed(settings, failed_since)
        if as_json:
            print_json({"since": failed_since.isoformat(), "redelivered": ids})
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
        fail(str(exc), 1)
    status = deliver_one(delivery_id, settings)
    with session_scope(settings) as session:
        entry = get_delivery(session, delivery_id).to_dict(
            attempts=attempts_of(session, delivery_id)
        )
    if as_json:
        print_json({"sent": status is not None, **entry})
    else:
        click.echo(_redelivery_line(entry, sent=status is not None, now=clock.now(settings)))
    if status is not None and status != DeliveryStatus.DELIVERED.value:
        sys.exit(1)


def _redelivery_line(entry: dict[str, Any], *, sent: bool, now: datetime) -> str:

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
    wait = (datetime.fromisoformat(entry["next_attempt_at"]) - now).total_seconds()
    return (
        f"{head}: attempt {entry['attempts']} failed ({what}); next attempt in {format_age(wait)}"
    )


@click.command()
@JSON_OPTION
def stats(as_json: bool) -> None:
    """Jobs by kind and status, oldest active jobs, polls per finished job, callbacks by status,
    and paused or throttled providers."""

    settings = read_settings()
    with session_scope(settings) as session:
        result = collect(session, now=clock.now(settings))
    result["durations"] = durations(settings)
    if as_json:
        print_json(result)
    else:
        click.echo(stats_page(result))
