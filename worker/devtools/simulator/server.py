"""A fake Tencent Cloud API over real HTTP on loopback, serving every action of the table.

Each request goes through what the real gateway does, in this order: the action and version
(``InvalidAction``, ``NoSuchVersion``), the TC3 signature (``AuthFailure.*``), the
region (``InvalidParameterValue`` when malformed, ``UnsupportedRegion`` when not served), the QPS
limit per action (``RequestLimitExceeded``), then the job's scripted lifecycle. Errors are
HTTP 200 with ``{"Response": {"Error": {...}, "RequestId"}}``, like the real API.
``GET /_simulator/counters`` returns the counters as JSON for other processes.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker.catalogue.table import PROVIDERS, ProviderSpec
from worker.devtools.simulator import signing
from worker.devtools.simulator.lifecycle import Lifecycles, Step
from worker.devtools.simulator.render import JSON_CONTENT_TYPE, Reply, error_body, render

logger = logging.getLogger(__name__)

DEFAULT_SECRET_ID = "AKIDsimulator0000000000000000000000"
DEFAULT_SECRET_KEY = "simulator-secret-key-000000000000"
#: Regions the simulator serves unless told otherwise.
DEFAULT_REGIONS = frozenset(
    {
        "ap-guangzhou",
        "ap-shanghai",
        "ap-beijing",
        "ap-chengdu",
        "ap-chongqing",
        "ap-nanjing",
        "ap-hongkong",
        "ap-singapore",
        "ap-bangkok",
        "ap-jakarta",
        "ap-seoul",
        "ap-tokyo",
        "na-siliconvalley",
        "na-ashburn",
        "eu-frankfurt",
        "sa-saopaulo",
    }
)
COUNTERS_PATH = "/_simulator/counters"
_REGION_RE = re.compile(r"^[a-z]{2,}(-[a-z0-9]+){1,3}$")
_MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Counters:
    """A snapshot of what the simulator saw."""

    #: Every API request, whatever its fate.
    total: int = 0
    #: RequestLimitExceeded answers (the QPS limit and scripted ``throttle`` steps).
    throttled: int = 0
    #: Requests refused with AuthFailure.*.
    auth_failures: int = 0
    #: TCP connections accepted (clients that reuse connections keep this low).
    connections: int = 0
    #: Polls of a JobId that arrived while another poll of it was still being answered: what a
    #: lease that does not hold looks like from the provider's side.
    overlaps: int = 0
    #: Answer bytes written (a client that stops reading a huge answer keeps this low).
    bytes_sent: int = 0
    #: JobId -> polls that reached the job's lifecycle (authenticated, not QPS-limited).
    polls: dict[str, int] = field(default_factory=dict)


class _SlidingWindow:
    """A strict limiter: at most ``qps`` admitted calls in any 1-second window (the 21st call
    within a second is refused at 20), stricter than a token bucket, which lets a burst through
    after a pause. ``other_qps`` plays another service spending part of the same quota: its calls
    count in the window too, evenly spread."""

    def __init__(self, qps: float, other_qps: float = 0.0) -> None:
        self.limit = int(qps)
        self.other_interval = 1.0 / other_qps if other_qps > 0 else None
        self.admitted: deque[float] = deque()
        self.other_next = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        if self.other_interval is not None:
            while self.other_next <= now:
                self.admitted.append(self.other_next)
                self.other_next += self.other_interval
        while self.admitted and self.admitted[0] <= now - 1.0:
            self.admitted.popleft()
        if len(self.admitted) >= self.limit:
            return False
        self.admitted.append(now)
        return True


class _TokenBucket:
    def __init__(self, qps: float) -> None:
        self.rate = qps
        self.capacity = max(1.0, qps)
        self.tokens = self.capacity
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Simulator:
    """The fake API. ``with Simulator(...) as sim:`` starts it on an ephemeral loopback port.

    ``providers`` defaults to the live :data:`~worker.catalogue.table.PROVIDERS` (read per
    request, so a kind registered later is served). ``qps`` limits each action (``None``: no limit).
    """

    def __init__(
        self,
        *,
        secret_id: str = DEFAULT_SECRET_ID,
        secret_key: str = DEFAULT_SECRET_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        qps: float | None = None,
        limiter: str = "bucket",
        other_qps: float = 0.0,
        slow_s: float = 2.0,
        dribble_s: float = 0.05,
        regions: Iterable[str] = DEFAULT_REGIONS,
        content_type: str = JSON_CONTENT_TYPE,
        providers: Mapping[str, ProviderSpec] | None = None,
    ) -> None:
        self._secrets = {secret_id: secret_key}
        self._address = (host, port)
        self.qps = qps
        if limiter not in ("bucket", "window"):
            raise ValueError(f"limiter must be 'bucket' or 'window', not {limiter!r}")
        self.limiter = limiter
        self.other_qps = other_qps
        self.slow_s = slow_s
        self.dribble_s = dribble_s
        self.regions = frozenset(regions)
        self.content_type = content_type
        self._providers = providers
        self.lifecycles = Lifecycles()
        self._lock = threading.Lock()
        self._buckets: dict[str, _TokenBucket | _SlidingWindow] = {}
        self._counts = {
            "total": 0,
            "throttled": 0,
            "auth_failures": 0,
            "connections": 0,
            "overlaps": 0,
            "bytes_sent": 0,
        }
        #: (kind, JobId) -> requests for it being answered right now.
        self._in_flight: Counter[tuple[str, str]] = Counter()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Simulator {self.url if self._server else 'stopped'}>"

    # -- lifecycle of the server --------------------------------------------------------------

    def start(self) -> Simulator:
        server = _Server(self._address, _Handler)
        server.simulator = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.name = f"simulator-{self.port}"
        self._thread.start()
        logger.info("simulator listening", extra={"url": self.url})
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL to use as an endpoint, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{self._address[0]}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment pointing every kind at this simulator, with its credentials."""
        ((secret_id, secret_key),) = self._secrets.items()
        env = {f"JOBTRACKER_{kind.upper()}_ENDPOINT": self.url for kind in self.providers}
        env.update({"TENCENTCLOUD_SECRET_ID": secret_id, "TENCENTCLOUD_SECRET_KEY": secret_key})
        return env

    # -- scripting and counters ---------------------------------------------------------------

    def script(
        self, job_id: str, steps: Iterable[str | Step], *, content_type: str | None = None
    ) -> None:
        """Script ``job_id``'s answers: poll n plays step n, the last step repeats.

        Steps: ``queued``, ``running``, ``done``, ``failed[:CODE]``, ``canceled``, ``notfound``,
        ``throttle``, ``internal``, ``html502``, ``junk``, ``noresponse``, ``badstatus``, ``drop``,
        ``slow``, ``error:CODE``. Resets the job's poll count.
        """
        self.lifecycles.script(job_id, steps, content_type=content_type)

    def counters(self) -> Counters:
        with self._lock:
            counts = dict(self._counts)
        return Counters(polls=self.lifecycles.polls(), **counts)

    def calls(self, job_id: str) -> int:
        """Polls of ``job_id`` that reached its lifecycle."""
        return self.lifecycles.polls().get(job_id, 0)

    def reset(self) -> None:
        """Forget scripts, counters and QPS state."""
        self.lifecycles.reset()
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)
            self._buckets.clear()

    @property
    def providers(self) -> Mapping[str, ProviderSpec]:
        return PROVIDERS if self._providers is None else self._providers

    # -- one request --------------------------------------------------------------------------

    def handle(self, request: signing.HttpRequest) -> Reply:
        """The reply to one API request (the HTTP layer is in :class:`_Handler`)."""
        request_id = str(uuid.uuid4())
        self._count("total")
        headers = request.headers
        # The real API answers in zh-CN unless asked otherwise; mark it so tests can tell.
        english = headers.get("x-tc-language", "zh-CN") == "en-US"

        def error(code: str, message: str) -> Reply:
            if not english:
                message = f"[zh-CN] {message}"
            payload = error_body(code, message, request_id)
            return Reply(content_type=self.content_type, body=json.dumps(payload).encode())

        action = headers.get("x-tc-action", "")
        spec = next((s for s in self.providers.values() if s.action == action), None)
        if not action:
            return error("MissingParameter", "The X-TC-Action header is missing.")
        if spec is None:
            return error("InvalidAction", f"The action {action} does not exist.")
        if headers.get("x-tc-version") != spec.version:
            version = headers.get("x-tc-version")
            return error("NoSuchVersion", f"The API version {version} of {action} does not exist.")

        try:
            signing.verify(request, secrets=self._secrets, service=spec.service, now=time.time())
        except signing.SignatureError as exc:
            self._count("auth_failures")
            return error(exc.code, exc.message)

        region = headers.get("x-tc-region", "")
        if not _REGION_RE.match(region):
            return error("InvalidParameterValue", f"The region {region!r} is invalid.")
        if region not in self.regions:
            return error("UnsupportedRegion", f"The API does not support region {region}.")

        if not self._admit(action):
            self._count("throttled")
            return error("RequestLimitExceeded", "Your requests exceed the frequency limit.")

        try:
            params = json.loads(request.body or b"{}")
        except ValueError:
            return error("InvalidParameter", "The request body is not JSON.")
        job_id = params.get(spec.job_id_param) if isinstance(params, dict) else None
        if not isinstance(job_id, str) or not job_id:
            return error("MissingParameter", f"The parameter {spec.job_id_param} is missing.")

        self._enter((spec.kind, job_id))
        script, step, poll = self.lifecycles.next_poll(spec.kind, job_id)
        logger.debug(
            "simulator poll",
            extra={"kind": spec.kind, "job_id": job_id, "poll": poll, "step": step.name},
        )
        if step.name == "throttle":
            self._count("throttled")
        if step.name == "slow":
            time.sleep(self.slow_s)
        content_type = script.content_type or self.content_type
        reply = render(spec, step, job_id=job_id, request_id=request_id, content_type=content_type)
        dribble = self.dribble_s if step.name == "dribble" else 0.0
        return replace(reply, job=(spec.kind, job_id), dribble_s=dribble)

    def _enter(self, job: tuple[str, str]) -> None:
        with self._lock:
            if self._in_flight[job]:
                self._counts["overlaps"] += 1
            self._in_flight[job] += 1

    def _leave(self, job: tuple[str, str]) -> None:
        with self._lock:
            self._in_flight[job] -= 1

    def _admit(self, action: str) -> bool:
        if self.qps is None:
            return True
        with self._lock:
            bucket = self._buckets.get(action)
            if bucket is None:
                bucket = self._buckets[action] = (
                    _SlidingWindow(self.qps, self.other_qps)
                    if self.limiter == "window"
                    else _TokenBucket(self.qps)
                )
            return bucket.take()

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def counters_json(self) -> bytes:
        return json.dumps(asdict(self.counters())).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: a sixth client connecting at once, before the accept
    # loop runs (a busy machine), has its SYN dropped and retried a second later, past a test's
    # connect timeout. Workers open a connection per thread (8 by default).
    request_queue_size = 64
    simulator: Simulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and left is normal here (the "slow" step); stay quiet.
        logger.debug("simulator connection error", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients reuse connections
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms per answer on a kept-alive connection), which no real gateway costs.
    disable_nagle_algorithm = True
    server: _Server
    timeout = 30

    def setup(self) -> None:
        super().setup()
        self.server.simulator._count("connections")

    def do_GET(self) -> None:
        if self.path.split("?")[0] == COUNTERS_PATH:
            self._send(Reply(body=self.server.simulator.counters_json()))
        else:
            self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._send(Reply(status=413, content_type="text/plain", body=b"too large"))
            return
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        request = signing.HttpRequest(
            method=self.command,
            path=path,
            query=query,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        simulator = self.server.simulator
        reply = simulator.handle(request)
        try:
            self._send(reply)
        finally:
            if reply.job is not None:
                simulator._leave(reply.job)

    def _send(self, reply: Reply) -> None:
        if reply.drop:
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        if reply.encoding:
            self.send_header("Content-Encoding", reply.encoding)
        if reply.repeat:
            # Size told by the end of the connection only, like a streaming gateway.
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(reply.body)))
        if reply.dribble_s:
            # Everything, status line included, one byte at a time.
            buffered: list[bytes] = self._headers_buffer  # type: ignore[attr-defined]
            head = b"".join(buffered)
            buffered.clear()
            self._trickle(head + b"\r\n" + reply.body, reply.dribble_s)
            return
        self.end_headers()
        self._write(reply.body)
        for _ in range(reply.repeat):
            self._write(reply.filler)
        self._write(reply.tail)

    def _write(self, data: bytes) -> None:
        if data:
            self.wfile.write(data)
            self.server.simulator._count("bytes_sent", len(data))

    def _trickle(self, data: bytes, pause_s: float) -> None:
        for index in range(len(data)):
            self._write(data[index : index + 1])
            self.wfile.flush()
            time.sleep(pause_s)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("simulator http: " + format, *args)
