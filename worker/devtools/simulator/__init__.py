"""A fake Tencent Cloud job-query API for tests, demos and local runs.

From Python::

    from worker.devtools.simulator import Simulator

    with Simulator(secret_id="AKID...", secret_key="...", qps=20) as sim:
        sim.url                      # http://127.0.0.1:<port>: the endpoint for every kind
        sim.env()                    # JOBTRACKER_*_ENDPOINT + TENCENTCLOUD_SECRET_* for Settings
        sim.script("job-1", ["queued", "running", "failed:FailedOperation.NoFaceDetected"])
        sim.counters()               # Counters(total, throttled, auth_failures, polls={JobId: n})

From a shell: ``python -m worker.devtools.simulator --port 18081 --secret-id ID --secret-key KEY``.
JobIds script themselves (``succeed-3-x``, ``fail-2-x``, ``notfound-x``...): see
:mod:`worker.devtools.simulator.lifecycle` for the grammar.
"""

from __future__ import annotations

from worker.devtools.simulator.lifecycle import Step, parse_job_id
from worker.devtools.simulator.server import (
    COUNTERS_PATH,
    DEFAULT_SECRET_ID,
    DEFAULT_SECRET_KEY,
    Counters,
    Simulator,
)

__all__ = [
    "COUNTERS_PATH",
    "DEFAULT_SECRET_ID",
    "DEFAULT_SECRET_KEY",
    "Counters",
    "Simulator",
    "Step",
    "parse_job_id",
]
