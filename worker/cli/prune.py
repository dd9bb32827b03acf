"""``jobtracker prune``: the retention, on demand."""

from __future__ import annotations

from datetime import timedelta

import click

from worker.cli.common import AGE, JSON_OPTION, fail, print_json, read_settings
from worker.lifecycle.prune import prune as run_prune
from worker.lifecycle.report import PruneReport


@click.command()
@click.option(
    "--older-than",
    type=AGE,
    help="Remove finished jobs older than this (30d, 12h) instead of JOBTRACKER_RETENTION_DAYS.",
)
@click.option("--dry-run", is_flag=True, help="Count what would go; remove nothing.")
@JSON_OPTION
def prune(older_than: timedelta | None, dry_run: bool, as_json: bool) -> None:
    """Remove finished jobs (with their transitions, callbacks and attempts) older than the
    retention, in small batches, leaving a tombstone per job so that enqueuing one again does
    not track it twice. Never removes an active job, a callback still pending, or a callback
    that failed less than the retention ago. Attempts of delivered callbacks go after
    JOBTRACKER_ATTEMPT_RETENTION_DAYS."""
    settings = read_settings()
    if older_than is None and settings.retention_days <= 0:
        fail("JOBTRACKER_RETENTION_DAYS is 0 (keep everything): give --older-than to prune")
    report = run_prune(
        settings,
        older_than_s=older_than.total_seconds() if older_than is not None else None,
        dry_run=dry_run,
    )
    if as_json:
        print_json(report.to_dict())
    else:
        click.echo(describe(report))


def describe(report: PruneReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    cutoff = report.cutoff.isoformat(timespec="seconds") if report.cutoff else "-"
    lines = [
        f"{verb} {report.jobs} finished job(s) older than {cutoff}"
        + (
            " (" + ", ".join(f"{kind} {n}" for kind, n in sorted(report.kinds.items())) + ")"
            if report.kinds
            else ""
        ),
        f"  with {report.transitions} transition(s), {report.deliveries} callback(s), "
        f"{report.attempts} attempt(s)",
        f"{verb} {report.delivered_attempts} attempt(s) of delivered callbacks",
        f"{verb} {report.tombstones_expired} expired tombstone(s)",
    ]
    if not report.dry_run:
        lines.append(f"{report.rows} row(s) in {report.batches} batch(es), {report.seconds:.1f} s")
    if report.archive:
        lines.append(f"archived to {report.archive}")
    return "\n".join(lines)
