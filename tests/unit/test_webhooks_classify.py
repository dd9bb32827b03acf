"""How transport failures map onto ``webhook_attempts.error_class``."""

from __future__ import annotations

import socket
import ssl

import pytest
import requests
from urllib3.connection import HTTPConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from worker.policy import DeliveryPolicy
from worker.webhooks.classify import AttemptError, classify

POLICY = DeliveryPolicy()
CONN = HTTPConnection("hooks.example.com", 443)


def wrapped(reason: Exception) -> MaxRetryError:
    return MaxRetryError(None, "/cb", reason)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "error_class", "fragment"),
    [
        (
            requests.exceptions.ConnectTimeout(wrapped(ConnectTimeoutError(CONN, "timed out"))),
            AttemptError.TIMEOUT,
            "connect timed out after 5 s",
        ),
        (
            requests.exceptions.ReadTimeout(ReadTimeoutError(None, "/cb", "read timed out")),  # type: ignore[arg-type]
            AttemptError.TIMEOUT,
            "timed out",
        ),
        (
            requests.exceptions.SSLError(
                wrapped(ssl.SSLCertVerificationError(1, "certificate verify failed"))
            ),
            AttemptError.TLS,
            "TLS failed",
        ),
        (
            requests.exceptions.ConnectionError(
                wrapped(
                    NameResolutionError(
                        "hooks.example.com", CONN, socket.gaierror(-2, "Name or service not known")
                    )
                )
            ),
            AttemptError.DNS,
            "Name or service not known",
        ),
        (
            requests.exceptions.ConnectionError(
                wrapped(NewConnectionError(CONN, "Failed to establish a new connection"))
            ),
            AttemptError.CONNECTION,
            "connection failed",
        ),
        (
            requests.exceptions.ConnectionError(
                ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset"))
            ),
            AttemptError.CONNECTION,
            "Connection reset",
        ),
        (
            requests.exceptions.ChunkedEncodingError("broken"),
            AttemptError.CONNECTION,
            "ChunkedEncodingError",
        ),
    ],
)
def test_classification(
    exc: requests.RequestException, error_class: AttemptError, fragment: str
) -> None:
    got_class, message = classify(exc, connect_timeout_s=POLICY.connect_timeout_s)
    assert got_class == error_class
    assert fragment in message
    assert "object at 0x" not in message
