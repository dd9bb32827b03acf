"""The ``jobtracker`` command line: one group, its commands in the modules beside this one."""

from __future__ import annotations

import click

from worker.ops.cli import inspect
from worker.ops.cli.api import api
from worker.ops.cli.clients import clients
from worker.ops.cli.enqueue import enqueue
from worker.ops.cli.prune import prune
from worker.ops.cli.run import db, demo, run


@click.group()
@click.version_option(package_name="jobtracker")
def main() -> None:
    """Track Tencent Cloud jobs and send signed completion callbacks."""


for command in (
    run,
    enqueue,
    inspect.jobs,
    inspect.show,
    inspect.deliveries,
    inspect.redeliver,
    inspect.stats,
    prune,
    db,
    api,
    clients,
    demo,
):
    main.add_command(command)

__all__ = ["main"]
