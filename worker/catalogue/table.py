"""The provider table: every Tencent job-query API jobtracker knows, described as data.

Like botocore's waiter acceptors, an entry says *which field, which value, which outcome*: where the
status is and what each raw value means, where the job's error and result are, how long the result
URL lives, and which provider error codes mean what. The client, the normalizer and the simulator
read the table; none of them has an ``if kind == ...``. A third API is one more entry.

Error codes are matched exactly first; a key ending in ``*`` matches every code starting with the
rest (``AuthFailure*`` matches ``AuthFailure`` and ``AuthFailure.TokenFailure``), the longest such
key winning. A kind's own codes win over :data:`COMMON_ERROR_CODES`; an unlisted code is transient
(DESIGN.md "Error classes": unknown never makes a false terminal state).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from jobtracker.models.status import JobStatus
from worker.errors import (
    JobCanceled,
    JobFailed,
    JobNotFound,
    ProviderConfigError,
    ProviderError,
    RequestRejected,
    ThrottledError,
    TransientProviderError,
)

#: A raw status value as the provider sends it: ``7`` (JSON integer) or ``"DONE"``.
RawStatus = int | str

_DAY_S = 24 * 3600.0


@dataclass(frozen=True)
class ResultSpec:
    """Where a succeeded job's output is.

    ``fields`` maps our result key to a dotted path inside ``Response``; the stored ``result`` is
    ``{key: value}`` with the value copied verbatim (``None`` when absent). ``required`` keys must
    be non-empty strings for a success to count: a "done" answer without its video URL is retried
    rather than reported, because a succeeded callback without the output is useless to receivers.
    """

    fields: Mapping[str, str]
    required: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.required) - set(self.fields)
        if unknown:
            raise ValueError(f"required result keys {sorted(unknown)} are not in fields")
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))


@dataclass(frozen=True, eq=False)
class ProviderSpec:
    """One Tencent Cloud job-query API."""

    kind: str
    service: str
    version: str
    action: str
    default_endpoint: str
    #: Dotted path of the status inside ``Response``.
    status_field: str = "Status"
    #: Raw status -> our status. Types are exact: ``7`` is not ``"7"``, ``True`` is not ``1``.
    status_values: Mapping[RawStatus, JobStatus] = field(default_factory=dict)
    #: Where a failed job's own error code and message are (read only for a failed status).
    error_code_field: str = "ErrorCode"
    error_message_field: str = "ErrorMessage"
    result: ResultSpec = field(default_factory=lambda: ResultSpec(fields={}))
    #: How long the result URL stays valid after we see the success; ``None``: unknown/unbounded.
    result_ttl_s: float | None = None
    #: This API's own error codes -> error class (see the module docstring for ``*`` keys).
    error_codes: Mapping[str, type[ProviderError]] = field(default_factory=dict)
    #: The request parameter carrying the JobId.
    job_id_param: str = "JobId"

    def __post_init__(self) -> None:
        # pending and expired are ours: no provider answer can mean them.
        allowed = {JobStatus.QUEUED, JobStatus.RUNNING} | {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELED,
        }
        for raw, status in self.status_values.items():
            if isinstance(raw, bool) or not isinstance(raw, int | str):
                raise ValueError(f"{self.kind}: raw status {raw!r} must be an int or a str")
            if status not in allowed:
                raise ValueError(f"{self.kind}: a provider status cannot mean {status}")
        if JobStatus.SUCCEEDED not in self.status_values.values():
            raise ValueError(f"{self.kind}: no raw status means succeeded")
        object.__setattr__(self, "status_values", MappingProxyType(dict(self.status_values)))
        object.__setattr__(self, "error_codes", MappingProxyType(dict(self.error_codes)))

    def status_for(self, raw: object) -> JobStatus | None:
        """Our status for a raw value, or ``None`` when the value is unknown or ill-typed."""
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            return None
        for known, status in self.status_values.items():
            if type(known) is type(raw) and known == raw:
                return status
        return None

    def raw_status(self, status: JobStatus) -> RawStatus | None:
        """The first raw value meaning ``status`` (the simulator renders answers with it)."""
        return next((raw for raw, ours in self.status_values.items() if ours == status), None)


#: Tencent Cloud API 3.0 common error codes, and the few prefix rules that cover their families.
#: The reasoning, class by class:
#:
#: - configuration (the job stays pending, the provider is paused, an operator must act): bad or
#:   unauthorized credentials, the IP allow/deny lists, the account's billing/activation state,
#:   and an action/version/product the API does not know (our table or endpoint is wrong).
#:   ``AuthFailure.SignatureExpire`` is clock skew on our host; it is configuration too.
#: - request rejected (transient, see :class:`~worker.errors.RequestRejected`): the request was
#:   malformed. Our only input is the JobId, so this is either one bad JobId or a bug of ours;
#:   ``UnsupportedRegion`` is per (kind, region) while pausing is per kind. None of them may fail
#:   a job (a bug of ours would fail every job) or pause a kind (one bad row would stop everyone).
#: - transient: the provider's own faults, capacity and quota limits, and whatever is unlisted.
#:   ``ResourceNotFound`` is generic (not the job) and stays transient: only the documented job
#:   codes end a job.
COMMON_ERROR_CODES: Mapping[str, type[ProviderError]] = MappingProxyType(
    {
        "ActionOffline": ProviderConfigError,
        "AuthFailure*": ProviderConfigError,
        "AuthFailure.InvalidAuthorization": ProviderConfigError,
        "AuthFailure.InvalidSecretId": ProviderConfigError,
        "AuthFailure.MFAFailure": ProviderConfigError,
        "AuthFailure.SecretIdNotFound": ProviderConfigError,
        "AuthFailure.SignatureExpire": ProviderConfigError,
        "AuthFailure.SignatureFailure": ProviderConfigError,
        "AuthFailure.TokenFailure": ProviderConfigError,
        "AuthFailure.UnauthorizedOperation": ProviderConfigError,
        "DryRunOperation": TransientProviderError,
        "FailedOperation": TransientProviderError,
        "InternalError*": TransientProviderError,
        "InvalidAction": ProviderConfigError,
        "InvalidParameter*": RequestRejected,
        "InvalidParameterValue*": RequestRejected,
        "InvalidRequest": RequestRejected,
        "IpInBlacklist": ProviderConfigError,
        "IpNotInWhitelist": ProviderConfigError,
        "LimitExceeded*": TransientProviderError,
        "MissingParameter*": RequestRejected,
        "NoSuchProduct": ProviderConfigError,
        "NoSuchVersion": ProviderConfigError,
        "RequestLimitExceeded*": ThrottledError,
        "RequestLimitExceeded.GlobalRegionUinLimitExceeded": ThrottledError,
        "RequestLimitExceeded.IPLimitExceeded": ThrottledError,
        "RequestLimitExceeded.UinLimitExceeded": ThrottledError,
        "RequestSizeLimitExceeded": RequestRejected,
        "ResourceInUse*": TransientProviderError,
        "ResourceInsufficient*": TransientProviderError,
        "ResourceNotFound*": TransientProviderError,
        "ResourceUnavailable*": TransientProviderError,
        # Billing and activation states shared by Tencent's AI products: an operator must act.
        "ResourceUnavailable.InArrears": ProviderConfigError,
        "ResourceUnavailable.LowBalance": ProviderConfigError,
        "ResourceUnavailable.NotExist": ProviderConfigError,
        "ResourceUnavailable.StopUsing": ProviderConfigError,
        "ResourceUnavailable.ChargeStatusException": ProviderConfigError,
        "ResponseSizeLimitExceeded": TransientProviderError,
        "ServiceUnavailable": TransientProviderError,
        "UnauthorizedOperation*": ProviderConfigError,
        "UnknownParameter": RequestRejected,
        "UnsupportedOperation*": TransientProviderError,
        "UnsupportedProtocol": ProviderConfigError,
        "UnsupportedRegion": RequestRejected,
        # Job codes shared by the job-query APIs: a job that is gone ends (after the grace period
        # for a just-submitted job, see normalize.effective_error_class).
        "FailedOperation.JobNotExist": JobNotFound,
        "FailedOperation.JobNotFound": JobNotFound,
        "FailedOperation.JobHasBeenCanceled": JobCanceled,
        # The provider's own faults (documented as such on the query pages).
        "FailedOperation.InnerError": TransientProviderError,
        "FailedOperation.RequestTimeout": TransientProviderError,
        "FailedOperation.RpcFail": TransientProviderError,
        "FailedOperation.UnKnowError": TransientProviderError,
        "FailedOperation.Unknown": TransientProviderError,
    }
)

# A query request carries nothing but the JobId, so an error about faces, bodies or the template
# can only describe the job's own inputs: the job failed, permanently. Parameter errors, on the
# other hand, describe the request (see COMMON_ERROR_CODES) and are never job failures.
_VIDEO_FACE_FUSION_CODES: dict[str, type[ProviderError]] = {
    "FailedOperation.NoFaceDetected": JobFailed,
    "FailedOperation.JobNotExist": JobNotFound,
    "FailedOperation.JobHasBeenCanceled": JobCanceled,
    "FailedOperation.ParameterValueError": RequestRejected,
    "FailedOperation.InnerError": TransientProviderError,
    "FailedOperation.RequestTimeout": TransientProviderError,
    "FailedOperation.RpcFail": TransientProviderError,
    "FailedOperation.UnKnowError": TransientProviderError,
    "FailedOperation.Unknown": TransientProviderError,
}

_IMAGE_ANIMATE_CODES: dict[str, type[ProviderError]] = {
    "FailedOperation.DriverFailed": JobFailed,
    "FailedOperation.ImageBodySmall": JobFailed,
    "FailedOperation.ImageCheckNoBody": JobFailed,
    "FailedOperation.ImageDetectFaceFailed": JobFailed,
    "FailedOperation.ImageManyPeople": JobFailed,
    "FailedOperation.ImageRadioExcceed": JobFailed,
    "FailedOperation.KeyPointUndetected": JobFailed,
    "FailedOperation.TemplateFirstFrameNotDetectFace": JobFailed,
    "FailedOperation.TemplateNotDetectBody": JobFailed,
    "FailedOperation.JobNotFound": JobNotFound,
    "AuthFailure": ProviderConfigError,
    "InternalError": TransientProviderError,
    "InvalidParameter": RequestRejected,
    "InvalidParameterValue": RequestRejected,
    "RequestLimitExceeded": ThrottledError,
    # Documented as "too many submitted tasks": a limit, so the provider backs off like any
    # RequestLimitExceeded*; never a job failure.
    "RequestLimitExceeded.JobNumExceed": ThrottledError,
    "UnauthorizedOperation": ProviderConfigError,
}

#: The vclm APIs (image animation, video stylization...) share WAIT/RUN/FAIL/DONE.
VCLM_STATUS_VALUES: Mapping[RawStatus, JobStatus] = MappingProxyType(
    {
        "WAIT": JobStatus.QUEUED,
        "RUN": JobStatus.RUNNING,
        "FAIL": JobStatus.FAILED,
        "DONE": JobStatus.SUCCEEDED,
    }
)

PROVIDERS: dict[str, ProviderSpec] = {
    spec.kind: spec
    for spec in (
        ProviderSpec(
            kind="video_face_fusion",
            service="facefusion",
            version="2022-09-27",
            action="QueryVideoFaceFusionJob",
            default_endpoint="https://facefusion.tencentcloudapi.com",
            status_field="JobStatusCode",
            status_values={
                1: JobStatus.QUEUED,
                3: JobStatus.RUNNING,
                5: JobStatus.FAILED,
                7: JobStatus.SUCCEEDED,
            },
            error_code_field="JobErrorCode",
            error_message_field="JobErrorMsg",
            result=ResultSpec(
                fields={
                    name: f"VideoFaceFusionOutput.{name}"
                    for name in (
                        "VideoUrl",
                        "VideoMD5",
                        "Width",
                        "Height",
                        "FPS",
                        "DurationInSec",
                        "Frame",
                    )
                },
                required=("VideoUrl",),
            ),
            # The API page does not say how long VideoUrl lives. It is a COS URL like the vclm
            # outputs, whose documented lifetime is 24 h; assuming the same is the safe side:
            # an early expiry estimate makes receivers fetch sooner, a late one loses videos.
            result_ttl_s=_DAY_S,
            error_codes=_VIDEO_FACE_FUSION_CODES,
        ),
        ProviderSpec(
            kind="image_animate",
            service="vclm",
            version="2024-05-23",
            action="DescribeImageAnimateJob",
            default_endpoint="https://vclm.intl.tencentcloudapi.com",
            status_field="Status",
            status_values=VCLM_STATUS_VALUES,
            error_code_field="ErrorCode",
            error_message_field="ErrorMessage",
            result=ResultSpec(
                fields={"ResultVideoUrl": "ResultVideoUrl", "MaskVideoUrl": "MaskVideoUrl"},
                required=("ResultVideoUrl",),
            ),
            # "ResultVideoUrl: It is valid for 24 hours."
            result_ttl_s=_DAY_S,
            error_codes=_IMAGE_ANIMATE_CODES,
        ),
    )
}


def kinds() -> tuple[str, ...]:
    """The kinds jobtracker accepts, in table order."""
    return tuple(PROVIDERS)


def error_class_for(spec: ProviderSpec, code: str) -> type[ProviderError]:
    """The error class of a provider error code: the kind's table, then the common one."""
    for table in (spec.error_codes, COMMON_ERROR_CODES):
        found = _lookup_code(table, code)
        if found is not None:
            return found
    return TransientProviderError


def _lookup_code(table: Mapping[str, type[ProviderError]], code: str) -> type[ProviderError] | None:
    exact = table.get(code)
    if exact is not None and not code.endswith("*"):
        return exact
    best: tuple[int, type[ProviderError]] | None = None
    for key, cls in table.items():
        if key.endswith("*") and code.startswith(key[:-1]) and (best is None or len(key) > best[0]):
            best = (len(key), cls)
    return best[1] if best else None
