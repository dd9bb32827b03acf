"""``jobtracker enqueue``: the command-line way in (the same validator as every other path)."""

from __future__ import annotations

import click

from worker.cli.common import fail, print_json, ready_settings, settings_or_exit
from worker.errors import EnqueueError
from worker.flow.enqueue import enqueue as store
from worker.flow.enqueue import validate


@click.command()
@click.argument("kind")
@click.argument("job_id")
@click.option("--callback-url", help="Where to POST the completion callback.")
@click.option("--region", help="Tencent region (default: TENCENTCLOUD_REGION).")
@click.option("--metadata", help="A JSON object echoed back in the callback.")
@click.option(
    "--expected-duration",
    metavar="SECONDS",
    help="How long the job should take, if you know (the poll schedule uses it).",
)
def enqueue(
    kind: str,
    job_id: str,
    callback_url: str | None,
    region: str | None,
    metadata: str | None,
    expected_duration: str | None,
) -> None:
    """Start tracking JOB_ID of KIND; print the tracked job as JSON."""
    settings = settings_or_exit()
    try:
        # Refuse bad input before touching the database.
        request = validate(
            kind,
            job_id,
            callback_url=callback_url,
            region=region,
            metadata=metadata,
            expected_duration_s=expected_duration,
            default_region=settings.region,
        )
        ready_settings()
        job = store(request, settings)
    except EnqueueError as exc:
        fail(str(exc), 2)
    print_json(job)
