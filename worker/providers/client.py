"""Signed calls to a provider's job-query API.

The official SDK's ``CommonClient`` builds and signs every request (TC3-HMAC-SHA256, en-US
messages); we send it ourselves with one pooled ``requests.Session`` per client, because the
SDK's own send path hides what we must see:

- it raises on ``Response.Error`` only when Content-Type is exactly ``application/json`` or
  ``text/plain`` (``application/json; charset=utf-8`` slips through), so every body is decoded and
  checked here whatever its Content-Type;
- an HTML 5xx body raises ``JSONDecodeError`` and transport faults become one generic
  ``ClientNetworkError``; here they are ``Transport.HTTP502``, ``Transport.Timeout``...;
- its retryer sleeps inside the worker; retries belong to the scheduler, so there is none;
- its send path logs whole requests (headers, signature) at DEBUG; ours logs no header.

Credentials live only inside the SDK's credential object: never in a log line, an exception
message or a repr.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from tencentcloud.common.common_client import CommonClient
from tencentcloud.common.credential import Credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.http.request import RequestInternal
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile

from worker.catalogue.table import PROVIDERS, ProviderSpec
from worker.errors import (
    ProviderConfigError,
    ProviderError,
    TransientProviderError,
    UnexpectedAnswer,
)
from worker.http import AnswerTooLarge, DeadlineAdapter, deadline, read_capped
from worker.jsonsafe import finite_float, no_constant
from worker.providers.normalize import Answer, normalize
from worker.settings import Settings

logger = logging.getLogger(__name__)

#: Bodies larger than this are not a job-query answer.
MAX_BODY_BYTES = 1 << 20


class ProviderClient:
    """Queries one kind's API in one region. Thread-safe; get one with :func:`get_client`."""

    def __init__(self, spec: ProviderSpec, region: str, settings: Settings) -> None:
        if not (settings.secret_id and settings.secret_key):
            raise ProviderConfigError(
                "TENCENTCLOUD_SECRET_ID / TENCENTCLOUD_SECRET_KEY are not set",
                code="Config.NoCredentials",
            )
        endpoint = settings.endpoints.get(spec.kind) or spec.default_endpoint
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ProviderConfigError(
                f"{spec.kind}: endpoint {endpoint!r} must be scheme://host[:port] without a path",
                code="Config.BadEndpoint",
            )
        self.spec = spec
        self.region = region
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        self._url = self.endpoint + "/"
        self._timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        #: The most one request may take in all: connecting, then reading the whole answer.
        self.request_deadline_s = settings.request_deadline_s
        self._built_from = _built_from(spec, settings)
        try:
            credential = Credential(settings.secret_id, settings.secret_key)
        except TencentCloudSDKException:
            # The SDK's message names the problem (blank, spaces), never the value.
            raise ProviderConfigError(
                "TENCENTCLOUD_SECRET_ID / TENCENTCLOUD_SECRET_KEY are blank or contain spaces",
                code="Config.BadCredentials",
            ) from None
        profile = ClientProfile(
            # Timeouts and keep-alive are our session's: the SDK only signs.
            httpProfile=HttpProfile(protocol=parts.scheme, endpoint=parts.netloc, reqMethod="POST"),
            language="en-US",
            retryer=None,
            disable_region_breaker=True,
        )
        self._sdk = CommonClient(spec.service, spec.version, credential, region, profile)
        self._session = requests.Session()
        adapter = DeadlineAdapter(
            pool_connections=1, pool_maxsize=max(10, settings.worker_concurrency), max_retries=0
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        # requests re-reads the proxy variables (and ~/.netrc) on every call, ~8 % of a poll's
        # CPU; the endpoint is fixed, so read them once here (HTTPS_PROXY, NO_PROXY still apply).
        self._session.proxies = requests.utils.get_environ_proxies(self._url)
        self._session.trust_env = False
        # What every request shares (method, URL, requests' default headers), prepared once:
        # preparing a whole request per call (the URL parsed again, the session's settings
        # merged) cost ~7 % of a poll's CPU. No cookie jar is merged in: a signed call needs
        # none, and the API sets none.
        self._template = self._session.prepare_request(requests.Request("POST", self._url))

    def __repr__(self) -> str:
        return f"<ProviderClient {self.spec.kind} {self.region} {self.endpoint}>"

    def query(self, job_id: str, *, now: datetime | None = None) -> Answer:
        """The job's current :class:`Answer`; raises only :class:`ProviderError` subclasses."""
        status_code, content_type, body = self._post({self.spec.job_id_param: job_id})
        decoded = _decode(body)
        # Tencent answers its errors with HTTP 200; anything else is a gateway or proxy talking,
        # unless it still carries a Response object (then that is the better signal).
        has_response = isinstance(decoded, dict) and isinstance(decoded.get("Response"), dict)
        if status_code != 200 and not has_response:
            raise TransientProviderError(
                f"{self.spec.action}: HTTP {status_code} ({content_type or 'no content type'})",
                code=f"Transport.HTTP{status_code}",
            )
        if decoded is _UNDECODABLE:
            raise UnexpectedAnswer(
                f"{self.spec.action}: the answer is not JSON ({content_type or 'no content type'}, "
                f"{len(body)} bytes)",
                code="Transport.BadAnswer",
            )
        answer = normalize(self.spec, decoded, now=now or datetime.now(UTC))
        logger.debug(
            "provider answer",
            extra={
                "kind": self.spec.kind,
                "job_id": job_id,
                "status": answer.status.value,
                "provider_status": answer.provider_status,
                "request_id": answer.request_id,
            },
        )
        return answer

    def matches(self, spec: ProviderSpec, settings: Settings) -> bool:
        """Whether this client was built from ``spec`` and these settings."""
        credential = self._sdk.credential
        return (
            self._built_from == _built_from(spec, settings)
            and credential.secret_id == settings.secret_id
            and credential.secret_key == settings.secret_key
        )

    def close(self) -> None:
        self._session.close()

    def _post(self, params: dict[str, Any]) -> tuple[int, str, bytes]:
        request = RequestInternal(
            self._sdk._get_endpoint(), "POST", "/", header={"X-TC-TraceId": str(uuid.uuid4())}
        )
        try:
            # The SDK's own TC3-HMAC-SHA256 signing (and X-TC-* headers, en-US language).
            self._sdk._build_req_inter(self.spec.action, params, request)
        except TencentCloudSDKException as exc:
            raise ProviderConfigError(
                f"{self.spec.action}: the SDK could not sign the request ({exc.get_code()})",
                code="Config.SigningFailed",
            ) from None
        # One deadline for the whole exchange: a gateway that dribbles its answer (each read
        # within the read timeout) must not hold the batch, and with it the jobs' leases.
        with deadline(self.request_deadline_s) as watchdog:
            try:
                prepared = self._template.copy()
                prepared.prepare_headers({**self._template.headers, **request.header})
                prepared.prepare_body(request.data, None)
                response = self._session.send(
                    prepared, timeout=self._timeout, stream=True, proxies=self._session.proxies
                )
                try:
                    body = read_capped(response, MAX_BODY_BYTES)
                    if not watchdog.fired:
                        response.raw.release_conn()  # read to its end: the socket can be reused
                finally:
                    response.close()
            except AnswerTooLarge as exc:
                raise UnexpectedAnswer(
                    f"{self.spec.action}: the answer is too large ({exc})",
                    code="Transport.BadAnswer",
                ) from None
            except requests.Timeout as exc:
                raise self._transport("Transport.Timeout", "timed out", exc) from None
            except Exception as exc:
                if watchdog.fired:
                    raise self._late() from None
                raise self._classify(exc) from None
            if watchdog.fired:  # the shutdown may have cut the answer short without an error
                raise self._late()
        return response.status_code, response.headers.get("Content-Type", ""), body

    def _late(self) -> ProviderError:
        return TransientProviderError(
            f"{self.spec.action} at {self.endpoint}: no complete answer within "
            f"{self.request_deadline_s:g} s",
            code="Transport.Timeout",
        )

    def _classify(self, exc: Exception) -> ProviderError:
        if isinstance(exc, requests.exceptions.SSLError):
            return self._transport("Transport.TLSError", "TLS failed", exc)
        if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
            return self._transport("Transport.ConnectionError", "connection failed", exc)
        # Anything else from the HTTP stack (a protocol error mid-body...) is a transport fault.
        return self._transport("Transport.Error", "request failed", exc)

    def _transport(self, code: str, what: str, exc: Exception) -> ProviderError:
        # The exception text names the URL and the socket error; requests never puts headers in it.
        return TransientProviderError(
            f"{self.spec.action} at {self.endpoint}: {what}: {type(exc).__name__}: {exc}"[
                :500
            ].replace("\x00", ""),
            code=code,
        )


_UNDECODABLE = object()


def _decode(body: bytes) -> Any:
    try:
        # NaN, Infinity and numbers too large for a float decode as None (see worker.jsonsafe).
        return json.loads(body, parse_constant=no_constant, parse_float=finite_float)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _UNDECODABLE


def _built_from(spec: ProviderSpec, settings: Settings) -> tuple[Any, ...]:
    """What a cached client was built from, secrets aside; a change (tests) builds a new client."""
    return (
        id(spec),
        settings.endpoints.get(spec.kind),
        settings.connect_timeout_s,
        settings.read_timeout_s,
        settings.worker_concurrency,
    )


_clients: dict[tuple[str, str], ProviderClient] = {}
_clients_lock = threading.Lock()


def _forget_clients_after_fork() -> None:
    # A forked worker (Celery prefork) must not share the parent's sockets, nor inherit a lock
    # another thread held at fork time.
    global _clients_lock
    _clients_lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_forget_clients_after_fork)


def get_client(kind: str, region: str, settings: Settings) -> ProviderClient:
    """The process's client for (kind, region), built on first use and reused (pooled sockets).

    Raises :class:`ProviderConfigError` for an unknown kind, missing credentials or a bad endpoint.
    """
    spec = PROVIDERS.get(kind)
    if spec is None:
        raise ProviderConfigError(f"unknown kind {kind!r}", code="Config.UnknownKind")
    key = (kind, region)
    with _clients_lock:
        client = _clients.get(key)
        if client is None or not client.matches(spec, settings):
            client = ProviderClient(spec, region, settings)
            _clients[key] = client
        return client


def clear_clients() -> None:
    """Close and forget every cached client (tests)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()
