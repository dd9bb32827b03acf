"""TC3-HMAC-SHA256, written from Tencent's published algorithm (not the SDK's signer).

The simulator verifies requests with it, so a test passing against the simulator shows the SDK's
signatures agree with an independent implementation of the spec:

1. CanonicalRequest = Method \\n URI \\n QueryString \\n CanonicalHeaders \\n SignedHeaders \\n
   hex(sha256(payload)); canonical headers are ``name:value\\n`` lower-cased, trimmed, sorted.
2. CredentialScope = Date/service/tc3_request, Date being the UTC date of X-TC-Timestamp.
3. StringToSign = "TC3-HMAC-SHA256" \\n Timestamp \\n CredentialScope \\n
   hex(sha256(CanonicalRequest)).
4. SecretSigning = HMAC(HMAC(HMAC("TC3" + key, Date), service), "tc3_request");
   Signature = hex(HMAC(SecretSigning, StringToSign)).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

ALGORITHM = "TC3-HMAC-SHA256"
#: The API refuses timestamps further than this from its clock.
MAX_SKEW_S = 300

_AUTH_RE = re.compile(
    r"^TC3-HMAC-SHA256 Credential=(?P<secret_id>[^/\s]+)/(?P<date>\d{4}-\d{2}-\d{2})/"
    r"(?P<service>[^/\s]+)/tc3_request, ?SignedHeaders=(?P<signed>[a-z0-9;\-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)


class SignatureError(Exception):
    """The request's signature does not verify; ``code`` is the Tencent error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class HttpRequest:
    """What the verifier needs of an HTTP request. ``headers`` keys are lower-case."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def canonical_request(request: HttpRequest, signed_headers: list[str]) -> str:
    canonical_headers = "".join(
        f"{name}:{request.headers.get(name, '').strip().lower()}\n" for name in signed_headers
    )
    return "\n".join(
        (
            request.method.upper(),
            request.path or "/",
            request.query if request.method.upper() == "GET" else "",
            canonical_headers,
            ";".join(signed_headers),
            _sha256_hex(request.body),
        )
    )


def string_to_sign(timestamp: str, scope: str, canonical: str) -> str:
    return "\n".join((ALGORITHM, timestamp, scope, _sha256_hex(canonical.encode("utf-8"))))


def signature(secret_key: str, date: str, service: str, to_sign: str) -> str:
    key = _hmac(("TC3" + secret_key).encode("utf-8"), date)
    key = _hmac(key, service)
    key = _hmac(key, "tc3_request")
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization(
    request: HttpRequest,
    *,
    secret_id: str,
    secret_key: str,
    service: str,
    timestamp: int,
    signed_headers: tuple[str, ...] = ("content-type", "host"),
    date: str | None = None,
) -> str:
    """The Authorization header for ``request`` (``date`` overridable to build bad requests)."""
    date = date or datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
    names = sorted(signed_headers)
    scope = f"{date}/{service}/tc3_request"
    to_sign = string_to_sign(str(timestamp), scope, canonical_request(request, names))
    return (
        f"{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders={';'.join(names)}, "
        f"Signature={signature(secret_key, date, service, to_sign)}"
    )


def verify(
    request: HttpRequest,
    *,
    secrets: Mapping[str, str],
    service: str,
    now: float,
    max_skew_s: float = MAX_SKEW_S,
) -> str:
    """Check the request's TC3 signature; return its SecretId or raise :class:`SignatureError`."""
    header = request.headers.get("authorization", "")
    match = _AUTH_RE.match(header.strip())
    if not match:
        raise SignatureError("AuthFailure.InvalidAuthorization", "Authorization is malformed.")
    raw_timestamp = request.headers.get("x-tc-timestamp", "")
    if not raw_timestamp.isdigit():
        raise SignatureError("AuthFailure.InvalidAuthorization", "X-TC-Timestamp is missing.")
    timestamp = int(raw_timestamp)
    if abs(now - timestamp) > max_skew_s:
        raise SignatureError(
            "AuthFailure.SignatureExpire",
            "Signature expired. Timestamp and server time cannot differ by more than five minutes.",
        )
    secret_id = match["secret_id"]
    secret_key = secrets.get(secret_id)
    if secret_key is None:
        raise SignatureError("AuthFailure.SecretIdNotFound", "The SecretId is not found.")
    signed = match["signed"].split(";")
    if signed != sorted(signed) or not {"content-type", "host"} <= set(signed):
        raise SignatureError("AuthFailure.SignatureFailure", "SignedHeaders are incomplete.")
    # The scope's date must be the timestamp's UTC date and its service the API's service.
    expected_date = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
    if match["date"] != expected_date or match["service"] != service:
        raise SignatureError("AuthFailure.SignatureFailure", "The credential scope is invalid.")
    scope = f"{match['date']}/{service}/tc3_request"
    to_sign = string_to_sign(raw_timestamp, scope, canonical_request(request, signed))
    expected = signature(secret_key, match["date"], service, to_sign)
    if not hmac.compare_digest(expected, match["signature"]):
        raise SignatureError(
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated. Please check your signature.",
        )
    return secret_id
