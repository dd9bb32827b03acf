"""The simulator's own TC3-HMAC-SHA256 verifier agrees with the SDK and refuses forgeries."""

from __future__ import annotations

import dataclasses
import time

import pytest
from tencentcloud.common.common_client import CommonClient
from tencentcloud.common.credential import Credential
from tencentcloud.common.http.request import RequestInternal
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile

from worker.devtools.simulator import signing

SECRET_ID = "AKIDunit0000"
SECRET_KEY = "unit-secret-key"
SECRETS = {SECRET_ID: SECRET_KEY}


def sdk_signed(*, key: str = SECRET_KEY, service: str = "vclm") -> signing.HttpRequest:
    """A request signed by the official SDK, as the simulator would receive it."""
    profile = ClientProfile(httpProfile=HttpProfile(endpoint="127.0.0.1:8080"), language="en-US")
    client = CommonClient(
        service, "2024-05-23", Credential(SECRET_ID, key), "ap-guangzhou", profile
    )
    request = RequestInternal("127.0.0.1:8080", "POST", "/", header={})
    client._build_req_inter("DescribeImageAnimateJob", {"JobId": "j-1"}, request)
    return signing.HttpRequest(
        method="POST",
        path="/",
        query="",
        headers={name.lower(): value for name, value in request.header.items()},
        body=request.data.encode(),
    )


def verify(request: signing.HttpRequest, **overrides: object) -> str:
    kwargs: dict[str, object] = {"secrets": SECRETS, "service": "vclm", "now": time.time()}
    kwargs.update(overrides)
    return signing.verify(request, **kwargs)  # type: ignore[arg-type]


def with_headers(request: signing.HttpRequest, **headers: str) -> signing.HttpRequest:
    return dataclasses.replace(request, headers={**request.headers, **headers})


def test_sdk_signature_verifies() -> None:
    assert verify(sdk_signed()) == SECRET_ID


def test_own_signer_matches_the_sdk() -> None:
    request = sdk_signed()
    timestamp = int(request.headers["x-tc-timestamp"])
    ours = signing.authorization(
        request, secret_id=SECRET_ID, secret_key=SECRET_KEY, service="vclm", timestamp=timestamp
    )
    assert ours == request.headers["authorization"]


def expect(code: str, request: signing.HttpRequest, **overrides: object) -> None:
    with pytest.raises(signing.SignatureError) as caught:
        verify(request, **overrides)
    assert caught.value.code == code


def test_tampered_body_is_refused() -> None:
    request = sdk_signed()
    tampered = dataclasses.replace(request, body=request.body.replace(b"j-1", b"j-2"))
    expect("AuthFailure.SignatureFailure", tampered)


def test_tampered_signed_header_is_refused() -> None:
    expect("AuthFailure.SignatureFailure", with_headers(sdk_signed(), host="evil.example:8080"))


def test_wrong_key_is_refused() -> None:
    expect("AuthFailure.SignatureFailure", sdk_signed(key="another-key"))


def test_unknown_secret_id_is_refused() -> None:
    expect("AuthFailure.SecretIdNotFound", sdk_signed(), secrets={"AKIDother": SECRET_KEY})


def test_wrong_service_in_scope_is_refused() -> None:
    expect("AuthFailure.SignatureFailure", sdk_signed(service="facefusion"))


def test_wrong_date_in_scope_is_refused() -> None:
    request = sdk_signed()
    timestamp = int(request.headers["x-tc-timestamp"])
    forged = signing.authorization(
        request,
        secret_id=SECRET_ID,
        secret_key=SECRET_KEY,
        service="vclm",
        timestamp=timestamp,
        date="2001-01-01",
    )
    expect("AuthFailure.SignatureFailure", with_headers(request, authorization=forged))


def test_old_timestamp_is_refused() -> None:
    expect("AuthFailure.SignatureExpire", sdk_signed(), now=time.time() + 3600)


def test_timestamp_moved_after_signing_is_refused() -> None:
    request = sdk_signed()
    moved = str(int(request.headers["x-tc-timestamp"]) + 1)
    expect("AuthFailure.SignatureFailure", with_headers(request, **{"x-tc-timestamp": moved}))


@pytest.mark.parametrize("header", ["", "Bearer x", "TC3-HMAC-SHA256 Credential=broken"])
def test_malformed_authorization_is_refused(header: str) -> None:
    expect("AuthFailure.InvalidAuthorization", with_headers(sdk_signed(), authorization=header))
