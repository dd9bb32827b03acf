"""The normalizer and the provider table, on the answers of the API pages and their near misses."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobtracker.models.jobs import JobStatus
from worker.catalogue.table import PROVIDERS, VCLM_STATUS_VALUES, ProviderSpec, ResultSpec, kinds
from worker.errors import UnexpectedAnswer
from worker.providers.normalize import Answer, normalize

NOW = datetime(2025, 1, 1, tzinfo=UTC)
FUSION = PROVIDERS["video_face_fusion"]
ANIMATE = PROVIDERS["image_animate"]

# The output example of QueryVideoFaceFusionJob, verbatim.
FUSION_DONE: dict[str, Any] = {
    "Response": {
        "JobStatusCode": 7,
        "JobStatus": "Processing completed",
        "VideoFaceFusionOutput": {
            "VideoUrl": "http://bda-video-bodyseg-1254418846.cos.ap-guangzhou.myqcloud.com/x.mp4",
            "VideoMD5": "3AA00F9A2914DF3F2268628C45C4E4CE",
            "Width": 720,
            "Height": 1280,
            "FPS": 25,
            "DurationInSec": 15.079999923706,
            "Frame": 375,
        },
        "JobErrorCode": "",
        "JobErrorMsg": "",
        "RequestId": "ef13456e-8174-4418-8e51-a724257c9a3a",
    }
}
# The output example of DescribeImageAnimateJob, verbatim.
ANIMATE_RUN: dict[str, Any] = {
    "Response": {
        "ErrorCode": "",
        "ErrorMessage": "",
        "RequestId": "a06a2134-0306-4554-aa9a-232271bfda4f",
        "ResultVideoUrl": "",
        "Status": "RUN",
    }
}


def with_fields(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = copy.deepcopy(base)
    body["Response"].update(fields)
    return body


def test_table_has_the_contract_kinds() -> None:
    assert kinds() == ("video_face_fusion", "image_animate")
    assert (FUSION.service, FUSION.version, FUSION.action) == (
        "facefusion",
        "2022-09-27",
        "QueryVideoFaceFusionJob",
    )
    assert (ANIMATE.service, ANIMATE.version, ANIMATE.action) == (
        "vclm",
        "2024-05-23",
        "DescribeImageAnimateJob",
    )


def test_fusion_done_keeps_every_output_field() -> None:
    answer = normalize(FUSION, FUSION_DONE, now=NOW)
    assert answer == Answer(
        status=JobStatus.SUCCEEDED,
        provider_status="7",
        result=FUSION_DONE["Response"]["VideoFaceFusionOutput"],
        result_expires_at=NOW + timedelta(hours=24),
        request_id="ef13456e-8174-4418-8e51-a724257c9a3a",
    )


def test_animate_run_is_running() -> None:
    answer = normalize(ANIMATE, ANIMATE_RUN, now=NOW)
    assert answer.status == JobStatus.RUNNING
    assert answer.provider_status == "RUN"
    assert answer.result is None and answer.error_code is None


@pytest.mark.parametrize(
    ("spec", "raw", "status"),
    [
        (FUSION, 1, JobStatus.QUEUED),
        (FUSION, 3, JobStatus.RUNNING),
        (ANIMATE, "WAIT", JobStatus.QUEUED),
        (ANIMATE, "RUN", JobStatus.RUNNING),
    ],
)
def test_in_progress_statuses(spec: ProviderSpec, raw: object, status: JobStatus) -> None:
    body = {"Response": {spec.status_field: raw, "RequestId": "r"}}
    assert normalize(spec, body, now=NOW) == Answer(
        status=status, provider_status=str(raw), request_id="r"
    )


def test_animate_done_has_urls_valid_24h() -> None:
    body = with_fields(ANIMATE_RUN, Status="DONE", ResultVideoUrl="https://r", MaskVideoUrl="")
    answer = normalize(ANIMATE, body, now=NOW)
    assert answer.status == JobStatus.SUCCEEDED
    assert answer.result == {"ResultVideoUrl": "https://r", "MaskVideoUrl": ""}
    assert answer.result_expires_at == NOW + timedelta(hours=24)


@pytest.mark.parametrize(
    ("spec", "body"),
    [
        (
            FUSION,
            {"Response": {"JobStatusCode": 5, "JobErrorCode": "E1", "JobErrorMsg": "no face"}},
        ),
        (ANIMATE, {"Response": {"Status": "FAIL", "ErrorCode": "E1", "ErrorMessage": "no face"}}),
    ],
)
def test_failed_status_carries_the_jobs_error(spec: ProviderSpec, body: dict[str, Any]) -> None:
    answer = normalize(spec, body, now=NOW)
    assert (answer.status, answer.error_code, answer.error_message) == (
        JobStatus.FAILED,
        "E1",
        "no face",
    )
    assert answer.result is None


def test_failed_status_without_error_fields_is_still_failed() -> None:
    answer = normalize(ANIMATE, {"Response": {"Status": "FAIL", "ErrorCode": ""}}, now=NOW)
    assert answer.status == JobStatus.FAILED
    assert answer.error_code is None


@pytest.mark.parametrize(
    ("spec", "raw"),
    [
        (FUSION, "7"),  # documented as an Integer
        (FUSION, 7.0),
        (FUSION, True),
        (FUSION, 2),
        (FUSION, None),
        (ANIMATE, "done"),
        (ANIMATE, ["DONE"]),
        (ANIMATE, None),
    ],
)
def test_unknown_or_ill_typed_status_is_unexpected(spec: ProviderSpec, raw: object) -> None:
    with pytest.raises(UnexpectedAnswer) as caught:
        normalize(spec, {"Response": {spec.status_field: raw}}, now=NOW)
    assert caught.value.code == "Answer.UnknownStatus"


@pytest.mark.parametrize("body", [None, [], "x", {}, {"Response": None}, {"response": {}}])
def test_no_response_object_is_a_bad_answer(body: object) -> None:
    with pytest.raises(UnexpectedAnswer) as caught:
        normalize(FUSION, body, now=NOW)
    assert caught.value.code == "Transport.BadAnswer"


@pytest.mark.parametrize("error", [None, "boom", {"Message": "no code"}, {"Code": ""}, {"Code": 7}])
def test_ill_formed_error_is_unexpected(error: object) -> None:
    with pytest.raises(UnexpectedAnswer) as caught:
        normalize(FUSION, {"Response": {"Error": error, "JobStatusCode": 7}}, now=NOW)
    assert caught.value.code == "Answer.BadError"


@pytest.mark.parametrize("output", [None, {}, {"VideoUrl": ""}, {"VideoUrl": 3}])
def test_success_without_its_video_is_retried(output: object) -> None:
    body = with_fields(FUSION_DONE, VideoFaceFusionOutput=output)
    with pytest.raises(UnexpectedAnswer) as caught:
        normalize(FUSION, body, now=NOW)
    assert caught.value.code == "Answer.MissingResult"


def test_long_provider_text_is_bounded() -> None:
    body = {"Response": {"Status": "FAIL", "ErrorCode": "C" * 500, "RequestId": "r" * 500}}
    answer = normalize(ANIMATE, body, now=NOW)
    assert answer.error_code is not None and len(answer.error_code) == 128
    assert answer.request_id is not None and len(answer.request_id) == 64


def test_spec_refuses_statuses_a_provider_cannot_mean() -> None:
    with pytest.raises(ValueError, match="cannot mean"):
        ProviderSpec(
            kind="k",
            service="s",
            version="v",
            action="A",
            default_endpoint="https://x",
            status_values={"DONE": JobStatus.SUCCEEDED, "OLD": JobStatus.EXPIRED},
        )
    with pytest.raises(ValueError, match="int or a str"):
        ProviderSpec(
            kind="k",
            service="s",
            version="v",
            action="A",
            default_endpoint="https://x",
            status_values={True: JobStatus.SUCCEEDED},
        )
    with pytest.raises(ValueError, match="not in fields"):
        ResultSpec(fields={"A": "A"}, required=("B",))


def test_a_new_entry_needs_no_code() -> None:
    spec = ProviderSpec(
        kind="video_stylization",
        service="vclm",
        version="2024-05-23",
        action="DescribeVideoStylizationJob",
        default_endpoint="https://vclm.intl.tencentcloudapi.com",
        status_values=VCLM_STATUS_VALUES,
        result=ResultSpec(
            fields={"ResultVideoUrl": "ResultVideoUrl"}, required=("ResultVideoUrl",)
        ),
        result_ttl_s=3600,
    )
    body = {"Response": {"Status": "DONE", "ResultVideoUrl": "https://v", "RequestId": "r"}}
    answer = normalize(spec, body, now=NOW)
    assert answer.result == {"ResultVideoUrl": "https://v"}
    assert answer.result_expires_at == NOW + timedelta(hours=1)
