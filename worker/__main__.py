"""``python -m worker``: the ``jobtracker`` command line."""

from worker.ops.cli import main

main()
