"""``jobtracker api``: the service API's HTTP server."""

from __future__ import annotations

import dataclasses

import click

from worker.api.server import serve
from worker.cli.common import ready_settings


@click.command()
@click.option("--host", help="Listen on this address (default: JOBTRACKER_API_HOST).")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="Listen on this port (default: JOBTRACKER_API_PORT).",
)
def api(host: str | None, port: int | None) -> None:
    """Serve the service API (enqueue and query jobs over HTTP) until Ctrl-C / SIGTERM."""
    settings = ready_settings(quiet=False)
    serve(
        dataclasses.replace(
            settings,
            api_host=settings.api_host if host is None else host,
            api_port=settings.api_port if port is None else port,
        )
    )
