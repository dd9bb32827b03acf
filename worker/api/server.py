"""``jobtracker api``: the app on uvicorn, configured from the settings.

uvicorn runs with uvloop and httptools (``uvicorn[standard]``), HTTP/1.1 keep-alive, and the
proxy-headers middleware trusting ``X-Forwarded-For`` / ``X-Forwarded-Proto`` only from
``JOBTRACKER_API_TRUSTED_PROXIES``: behind a TLS-terminating proxy the logs and redirects see the
real client and scheme, and nobody else can claim them. On SIGTERM / Ctrl-C it stops accepting,
answers every ``?wait=`` request at once with its job as it is (instead of holding the shutdown
for up to a minute), lets the requests in flight finish (at most 10 s), then exits.
"""

from __future__ import annotations

import logging
import resource
from types import FrameType

import uvicorn

from worker.api.app import create_app
from worker.api.auth import ApiContext
from worker.inspection.gauges import DatabaseCollector
from worker.observe.metrics import start_metrics_server
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Seconds an idle keep-alive connection stays open: above the usual 60 s idle timeout of load
#: balancers, so the proxy, not this server, closes idle connections (no 502 on a reused one).
KEEP_ALIVE_S = 75
GRACEFUL_SHUTDOWN_S = 10


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, context: ApiContext) -> None:
        super().__init__(config)
        self.context = context

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.context.waiters.release_all_soon()


def _raise_open_files_limit() -> None:
    """Every held ``?wait=`` request is an open socket: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d: %s", soft, exc)


def serve(settings: Settings) -> None:
    """Run the API until SIGTERM / Ctrl-C."""
    app = create_app(settings)
    _raise_open_files_limit()
    start_metrics_server(settings, DatabaseCollector(settings))
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        proxy_headers=True,
        forwarded_allow_ips=list(settings.api_trusted_proxies),
        # Logging is ours (text or JSON lines, configured before); our access line is observe.py's.
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
    )
    context = app.state.jobtracker
    assert isinstance(context, ApiContext)
    _Server(config, context).run()
