"""``python -m worker``: the ``jobtracker`` command line."""

from worker.cli import main

main()
