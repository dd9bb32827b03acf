"""Every error code of both API pages and of Tencent's common list lands in the right class."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jobtracker.models.jobs import JobStatus
from worker.catalogue.table import PROVIDERS
from worker.errors import (
    ErrorClass,
    JobCanceled,
    JobFailed,
    JobNotFound,
    ProviderConfigError,
    ProviderError,
    RequestRejected,
    ThrottledError,
    TransientProviderError,
)
from worker.providers.normalize import effective_error_class, normalize

NOW = datetime(2025, 1, 1, tzinfo=UTC)

# Written from the pages (shared/reference) and DESIGN.md, not from the table under test.
VIDEO_FACE_FUSION_PAGE = {
    "FailedOperation.InnerError": TransientProviderError,
    "FailedOperation.JobHasBeenCanceled": JobCanceled,
    "FailedOperation.JobNotExist": JobNotFound,
    "FailedOperation.NoFaceDetected": JobFailed,
    "FailedOperation.ParameterValueError": RequestRejected,
    "FailedOperation.RequestTimeout": TransientProviderError,
    "FailedOperation.RpcFail": TransientProviderError,
    "FailedOperation.UnKnowError": TransientProviderError,
    "FailedOperation.Unknown": TransientProviderError,
}
IMAGE_ANIMATE_PAGE = {
    "AuthFailure": ProviderConfigError,
    "FailedOperation.DriverFailed": JobFailed,
    "FailedOperation.ImageBodySmall": JobFailed,
    "FailedOperation.ImageCheckNoBody": JobFailed,
    "FailedOperation.ImageDetectFaceFailed": JobFailed,
    "FailedOperation.ImageManyPeople": JobFailed,
    "FailedOperation.ImageRadioExcceed": JobFailed,
    "FailedOperation.JobNotFound": JobNotFound,
    "FailedOperation.KeyPointUndetected": JobFailed,
    "FailedOperation.TemplateFirstFrameNotDetectFace": JobFailed,
    "FailedOperation.TemplateNotDetectBody": JobFailed,
    "InternalError": TransientProviderError,
    "InvalidParameter": RequestRejected,
    "InvalidParameterValue": RequestRejected,
    "RequestLimitExceeded": ThrottledError,
    "RequestLimitExceeded.JobNumExceed": ThrottledError,
    "UnauthorizedOperation": ProviderConfigError,
}
COMMON = {
    "ActionOffline": ProviderConfigError,
    "AuthFailure.InvalidAuthorization": ProviderConfigError,
    "AuthFailure.InvalidSecretId": ProviderConfigError,
    "AuthFailure.MFAFailure": ProviderConfigError,
    "AuthFailure.SecretIdNotFound": ProviderConfigError,
    "AuthFailure.SignatureExpire": ProviderConfigError,
    "AuthFailure.SignatureFailure": ProviderConfigError,
    "AuthFailure.TokenFailure": ProviderConfigError,
    "AuthFailure.UnauthorizedOperation": ProviderConfigError,
    "AuthFailure.SomethingNew": ProviderConfigError,
    "DryRunOperation": TransientProviderError,
    "FailedOperation": TransientProviderError,
    "InternalError": TransientProviderError,
    "InternalError.DbError": TransientProviderError,
    "InvalidAction": ProviderConfigError,
    "InvalidParameter": RequestRejected,
    "InvalidParameter.JobId": RequestRejected,
    "InvalidParameterValue": RequestRejected,
    "InvalidRequest": RequestRejected,
    "IpInBlacklist": ProviderConfigError,
    "IpNotInWhitelist": ProviderConfigError,
    "LimitExceeded": TransientProviderError,
    "MissingParameter": RequestRejected,
    "NoSuchProduct": ProviderConfigError,
    "NoSuchVersion": ProviderConfigError,
    "RequestLimitExceeded": ThrottledError,
    "RequestLimitExceeded.GlobalRegionUinLimitExceeded": ThrottledError,
    "RequestLimitExceeded.IPLimitExceeded": ThrottledError,
    "RequestLimitExceeded.UinLimitExceeded": ThrottledError,
    "RequestSizeLimitExceeded": RequestRejected,
    "ResourceInUse": TransientProviderError,
    "ResourceInsufficient": TransientProviderError,
    "ResourceNotFound": TransientProviderError,
    "ResourceUnavailable": TransientProviderError,
    "ResourceUnavailable.InArrears": ProviderConfigError,
    "ResourceUnavailable.NotExist": ProviderConfigError,
    "ResponseSizeLimitExceeded": TransientProviderError,
    "ServiceUnavailable": TransientProviderError,
    "UnauthorizedOperation": ProviderConfigError,
    "UnauthorizedOperation.CamNoAuth": ProviderConfigError,
    "UnknownParameter": RequestRejected,
    "UnsupportedOperation": TransientProviderError,
    "UnsupportedProtocol": ProviderConfigError,
    "UnsupportedRegion": RequestRejected,
    # Unlisted: transient, never a false terminal state.
    "FailedOperation.SomethingNew": TransientProviderError,
    "Totally.Unknown": TransientProviderError,
}

CASES = [
    *[("video_face_fusion", code, cls) for code, cls in (COMMON | VIDEO_FACE_FUSION_PAGE).items()],
    *[("image_animate", code, cls) for code, cls in (COMMON | IMAGE_ANIMATE_PAGE).items()],
]


def error_response(code: str) -> dict[str, object]:
    return {"Response": {"Error": {"Code": code, "Message": f"m {code}"}, "RequestId": "r-1"}}


@pytest.mark.parametrize(("kind", "code", "expected"), CASES)
def test_error_code_class(kind: str, code: str, expected: type[ProviderError]) -> None:
    with pytest.raises(ProviderError) as caught:
        normalize(PROVIDERS[kind], error_response(code), now=NOW)
    assert type(caught.value) is expected
    assert caught.value.code == code
    assert caught.value.message == f"m {code}"
    assert caught.value.request_id == "r-1"


def test_a_job_failure_code_of_one_api_is_not_a_failure_of_the_other() -> None:
    # NoFaceDetected is documented for face fusion only; on image_animate it is unknown.
    with pytest.raises(TransientProviderError):
        normalize(
            PROVIDERS["image_animate"], error_response("FailedOperation.NoFaceDetected"), now=NOW
        )


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (TransientProviderError, ErrorClass.TRANSIENT),
        (ThrottledError, ErrorClass.TRANSIENT),
        (RequestRejected, ErrorClass.TRANSIENT),
        (JobFailed, ErrorClass.JOB_TERMINAL),
        (JobNotFound, ErrorClass.JOB_TERMINAL),
        (JobCanceled, ErrorClass.JOB_TERMINAL),
        (ProviderConfigError, ErrorClass.CONFIGURATION),
    ],
)
def test_error_classes(cls: type[ProviderError], expected: ErrorClass) -> None:
    assert cls(code="X").error_class == expected


def test_terminal_errors_say_their_status() -> None:
    assert JobFailed(code="X").terminal_status == JobStatus.FAILED
    assert JobNotFound(code="X").terminal_status == JobStatus.FAILED
    assert JobCanceled(code="X").terminal_status == JobStatus.CANCELED


def test_not_found_is_transient_within_the_grace_period() -> None:
    error = JobNotFound(code="FailedOperation.JobNotExist")
    assert effective_error_class(error, job_age_s=10, grace_s=300) == ErrorClass.TRANSIENT
    assert effective_error_class(error, job_age_s=300, grace_s=300) == ErrorClass.JOB_TERMINAL
    assert effective_error_class(error, job_age_s=10, grace_s=0) == ErrorClass.JOB_TERMINAL


def test_grace_applies_only_to_not_found() -> None:
    for error in (JobCanceled(code="c"), JobFailed(code="f")):
        assert effective_error_class(error, job_age_s=1, grace_s=300) == ErrorClass.JOB_TERMINAL
    config = ProviderConfigError(code="AuthFailure")
    assert effective_error_class(config, job_age_s=1, grace_s=300) == ErrorClass.CONFIGURATION
