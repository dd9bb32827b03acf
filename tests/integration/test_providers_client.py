"""The provider client against the simulator over real HTTP: every lifecycle, for both kinds."""

from __future__ import annotations

import logging
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobtracker.models.jobs import JobStatus
from worker.catalogue.table import PROVIDERS, VCLM_STATUS_VALUES, ProviderSpec, ResultSpec
from worker.devtools.simulator import Simulator
from worker.errors import (
    ErrorClass,
    JobCanceled,
    JobFailed,
    JobNotFound,
    JobTerminalError,
    ProviderConfigError,
    ProviderError,
    RequestRejected,
    ThrottledError,
    TransientProviderError,
    UnexpectedAnswer,
)
from worker.providers.client import clear_clients, get_client
from worker.providers.normalize import Answer
from worker.settings import Settings

SECRET_ID = "AKIDintegration000000000000000001"
SECRET_KEY = "itest-Secret-Key-7f3b9c2e5d1a"
REGION = "ap-guangzhou"
KINDS = ["video_face_fusion", "image_animate"]
#: The job's own failure code the simulator reports, per kind (the first JobFailed code).
FAILURE_CODES = {
    "video_face_fusion": "FailedOperation.NoFaceDetected",
    "image_animate": "FailedOperation.DriverFailed",
}
NOT_FOUND_CODES = {
    "video_face_fusion": "FailedOperation.JobNotExist",
    "image_animate": "FailedOperation.JobNotFound",
}
RESULT_KEYS = {
    "video_face_fusion": {
        "VideoUrl",
        "VideoMD5",
        "Width",
        "Height",
        "FPS",
        "DurationInSec",
        "Frame",
    },
    "image_animate": {"ResultVideoUrl", "MaskVideoUrl"},
}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(secret_id=SECRET_ID, secret_key=SECRET_KEY, slow_s=1.0) as simulator:
        yield simulator
    clear_clients()


def make_settings(sim: Simulator, tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {**sim.env(), "JOBTRACKER_READ_TIMEOUT": "0.4", "JOBTRACKER_CONNECT_TIMEOUT": "1", **env},
        cwd=tmp_path,
    )


@pytest.fixture
def settings(sim: Simulator, tmp_path: Path) -> Settings:
    return make_settings(sim, tmp_path)


def query(kind: str, job_id: str, settings: Settings) -> Answer:
    return get_client(kind, REGION, settings).query(job_id)


def query_error(kind: str, job_id: str, settings: Settings) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        query(kind, job_id, settings)
    return caught.value


@pytest.mark.parametrize("kind", KINDS)
def test_succeeds_on_the_third_poll(kind: str, settings: Settings) -> None:
    answers = [query(kind, "succeed-3-a", settings) for _ in range(3)]
    assert [a.status for a in answers] == [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED]
    done = answers[-1]
    assert done.result is not None and set(done.result) == RESULT_KEYS[kind]
    assert all(value not in (None, "") for value in done.result.values())
    assert done.result_expires_at is not None
    assert done.request_id and done.provider_status == str(PROVIDERS[kind].raw_status(done.status))


@pytest.mark.parametrize("kind", KINDS)
def test_failed_job(kind: str, settings: Settings) -> None:
    assert query(kind, "fail-2-a", settings).status == JobStatus.QUEUED
    answer = query(kind, "fail-2-a", settings)
    assert answer.status == JobStatus.FAILED
    assert answer.error_code == FAILURE_CODES[kind]
    assert answer.error_message and answer.result is None


@pytest.mark.parametrize("kind", KINDS)
def test_scripted_lifecycle(kind: str, sim: Simulator, settings: Settings) -> None:
    sim.script("job-1", ["queued", "running", "running", "failed:FailedOperation.Custom"])
    statuses = [query(kind, "job-1", settings) for _ in range(4)]
    assert [a.status for a in statuses] == [
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.RUNNING,
        JobStatus.FAILED,
    ]
    assert statuses[-1].error_code == "FailedOperation.Custom"
    assert sim.calls("job-1") == 4


@pytest.mark.parametrize("kind", KINDS)
def test_not_found(kind: str, settings: Settings) -> None:
    error = query_error(kind, "notfound-a", settings)
    assert type(error) is JobNotFound and error.code == NOT_FOUND_CODES[kind]
    assert error.terminal_status == JobStatus.FAILED


@pytest.mark.parametrize("kind", KINDS)
def test_briefly_not_found_then_visible(kind: str, settings: Settings) -> None:
    assert isinstance(query_error(kind, "notfound-1-a", settings), JobNotFound)
    assert query(kind, "notfound-1-a", settings).status == JobStatus.SUCCEEDED


@pytest.mark.parametrize("kind", KINDS)
def test_canceled(kind: str, settings: Settings) -> None:
    assert query(kind, "cancel-2-a", settings).status == JobStatus.QUEUED
    error = query_error(kind, "cancel-2-a", settings)
    assert type(error) is JobCanceled and error.terminal_status == JobStatus.CANCELED


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("job_id", "error_type", "code"),
    [
        ("throttle-a", ThrottledError, "RequestLimitExceeded"),
        ("internal-a", TransientProviderError, "InternalError"),
        ("html502-a", TransientProviderError, "Transport.HTTP502"),
        ("junk-a", UnexpectedAnswer, "Transport.BadAnswer"),
        ("noresponse-a", UnexpectedAnswer, "Transport.BadAnswer"),
        ("badstatus-a", UnexpectedAnswer, "Answer.UnknownStatus"),
        ("drop-a", TransientProviderError, "Transport.ConnectionError"),
        ("slow-a", TransientProviderError, "Transport.Timeout"),
        ("error-FailedOperation.RpcFail-a", TransientProviderError, "FailedOperation.RpcFail"),
        (
            "error-ResourceUnavailable.InArrears-a",
            ProviderConfigError,
            "ResourceUnavailable.InArrears",
        ),
        ("error-InvalidParameterValue-a", RequestRejected, "InvalidParameterValue"),
    ],
)
def test_transient_and_configuration_faults(
    kind: str, job_id: str, error_type: type[ProviderError], code: str, settings: Settings
) -> None:
    error = query_error(kind, job_id, settings)
    assert type(error) is error_type
    assert error.code == code
    assert error.error_class != ErrorClass.JOB_TERMINAL


@pytest.mark.parametrize("kind", KINDS)
def test_recovers_after_faults(kind: str, settings: Settings) -> None:
    for job_id in ("throttle-1-b", "drop-1-b", "html502-1-b", "slow-1-b", "junk-1-b"):
        assert isinstance(query_error(kind, job_id, settings), TransientProviderError)
        assert query(kind, job_id, settings).status == JobStatus.SUCCEEDED


def test_slow_answer_within_the_read_timeout(sim: Simulator, settings: Settings) -> None:
    sim.slow_s = 0.05
    assert query("image_animate", "slow-a", settings).status == JobStatus.RUNNING


@pytest.mark.parametrize("kind", KINDS)
def test_job_failure_code_in_response_error(kind: str, settings: Settings) -> None:
    error = query_error(kind, f"error-{FAILURE_CODES[kind]}-a", settings)
    assert type(error) is JobFailed and error.terminal_status == JobStatus.FAILED


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
def test_both_content_type_spellings(
    kind: str, content_type: str, sim: Simulator, settings: Settings
) -> None:
    # The SDK raises on Response.Error only for the exact "application/json": don't rely on it.
    sim.content_type = content_type
    assert type(query_error(kind, "internal-x", settings)) is TransientProviderError
    assert type(query_error(kind, "notfound-x", settings)) is JobNotFound
    assert (
        type(query_error(kind, "error-AuthFailure.TokenFailure-x", settings)) is ProviderConfigError
    )
    assert query(kind, "fail-1-x", settings).status == JobStatus.FAILED
    assert query(kind, "succeed-1-x", settings).status == JobStatus.SUCCEEDED


def test_charset_spelling_from_the_job_id(settings: Settings) -> None:
    assert type(query_error("image_animate", "charset.cancel-1-x", settings)) is JobCanceled


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_secret_is_configuration_never_a_failed_job(
    kind: str, sim: Simulator, tmp_path: Path
) -> None:
    settings = make_settings(sim, tmp_path, TENCENTCLOUD_SECRET_KEY="not-the-right-key")
    for job_id in ("fail-1-x", "notfound-x", "succeed-1-x"):
        error = query_error(kind, job_id, settings)
        assert type(error) is ProviderConfigError and not isinstance(error, JobTerminalError)
        assert error.code == "AuthFailure.SignatureFailure"
    assert sim.counters().auth_failures == 3
    assert sim.counters().polls == {}


def test_unknown_secret_id_is_configuration(sim: Simulator, tmp_path: Path) -> None:
    settings = make_settings(sim, tmp_path, TENCENTCLOUD_SECRET_ID="AKIDnobody")
    error = query_error("video_face_fusion", "succeed-1-x", settings)
    assert type(error) is ProviderConfigError and error.code == "AuthFailure.SecretIdNotFound"


def test_regions(settings: Settings) -> None:
    client = get_client("image_animate", "ap-mars", settings)
    with pytest.raises(RequestRejected) as caught:
        client.query("succeed-1-x")
    assert caught.value.code == "UnsupportedRegion"
    # We ask for en-US messages; the simulator marks zh-CN ones.
    assert not caught.value.message.startswith("[zh-CN]")
    with pytest.raises(RequestRejected) as caught:
        get_client("image_animate", "Mars!", settings).query("succeed-1-x")
    assert caught.value.code == "InvalidParameterValue"


def test_connection_refused(tmp_path: Path) -> None:
    with Simulator(secret_id=SECRET_ID, secret_key=SECRET_KEY) as stopped:
        settings = make_settings(stopped, tmp_path)
    try:
        error = query_error("image_animate", "succeed-1-x", settings)
    finally:
        clear_clients()
    assert type(error) is TransientProviderError and error.code == "Transport.ConnectionError"


def test_clients_are_cached_per_kind_and_region(sim: Simulator, settings: Settings) -> None:
    client = get_client("image_animate", REGION, settings)
    assert get_client("image_animate", REGION, settings) is client
    assert get_client("image_animate", "ap-shanghai", settings) is not client
    assert get_client("video_face_fusion", REGION, settings) is not client
    for _ in range(5):
        client.query("succeed-1-x")
    assert sim.counters().connections == 1  # one kept-alive connection for five queries


def test_new_settings_build_a_new_client(
    sim: Simulator, settings: Settings, tmp_path: Path
) -> None:
    client = get_client("image_animate", REGION, settings)
    other = make_settings(sim, tmp_path, TENCENTCLOUD_SECRET_KEY="rotated-key")
    assert get_client("image_animate", REGION, other) is not client


def test_one_client_serves_many_threads(sim: Simulator, tmp_path: Path) -> None:
    settings = make_settings(sim, tmp_path, JOBTRACKER_READ_TIMEOUT="5")
    results: list[Any] = []

    def work(n: int) -> None:
        client = get_client("video_face_fusion", REGION, settings)
        for i in range(5):
            results.append(client.query(f"succeed-1-t{n}-{i}").status)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [JobStatus.SUCCEEDED] * 40
    assert sim.counters().connections <= 8


def test_missing_credentials_and_unknown_kind(sim: Simulator, tmp_path: Path) -> None:
    env = {k: v for k, v in sim.env().items() if not k.startswith("TENCENTCLOUD_")}
    bare = Settings.from_env(env, cwd=tmp_path)
    with pytest.raises(ProviderConfigError) as caught:
        get_client("image_animate", REGION, bare)
    assert caught.value.code == "Config.NoCredentials"
    with pytest.raises(ProviderConfigError) as caught:
        get_client("nope", REGION, bare)
    assert caught.value.code == "Config.UnknownKind"


def test_a_third_api_is_one_table_entry(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ProviderSpec(
        kind="video_stylization",
        service="vclm",
        version="2024-05-23",
        action="DescribeVideoStylizationJob",
        default_endpoint="https://vclm.intl.tencentcloudapi.com",
        status_field="Status",
        status_values=VCLM_STATUS_VALUES,
        result=ResultSpec(
            fields={"ResultVideoUrl": "ResultVideoUrl"}, required=("ResultVideoUrl",)
        ),
        result_ttl_s=24 * 3600,
    )
    monkeypatch.setitem(PROVIDERS, spec.kind, spec)
    settings = make_settings(sim, tmp_path)  # env now names JOBTRACKER_VIDEO_STYLIZATION_ENDPOINT
    assert settings.endpoints[spec.kind] == sim.url

    answers = [query(spec.kind, "succeed-2-x", settings) for _ in range(2)]
    assert [(a.status, a.provider_status) for a in answers] == [
        (JobStatus.QUEUED, "WAIT"),
        (JobStatus.SUCCEEDED, "DONE"),
    ]
    assert answers[1].result is not None and answers[1].result["ResultVideoUrl"].startswith("https")
    assert query(spec.kind, "fail-1-x", settings).status == JobStatus.FAILED
    assert type(query_error(spec.kind, "notfound-x", settings)) is JobNotFound
    assert type(query_error(spec.kind, "cancel-1-x", settings)) is JobCanceled


def test_no_secret_in_logs_errors_or_reprs(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = make_settings(sim, tmp_path)
    bad = make_settings(sim, tmp_path, TENCENTCLOUD_SECRET_KEY=SECRET_KEY + "-wrong")
    texts: list[str] = [repr(good), repr(bad), repr(sim)]
    for settings in (good, bad):
        for kind in KINDS:
            client = get_client(kind, REGION, settings)
            texts.append(repr(client))
            for job_id in ("succeed-1-x", "fail-1-x", "notfound-x", "drop-x", "slow-x", "junk-x"):
                try:
                    texts.append(repr(client.query(job_id)))
                except ProviderError as exc:
                    texts += [str(exc), repr(exc), exc.message]
        clear_clients()
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records, "the run logged nothing: the check would prove nothing"
    for text in [logged, *texts]:
        assert SECRET_KEY not in text
        assert "Signature=" not in text


@pytest.mark.serial  # a bound on wall time
@pytest.mark.parametrize("kind", KINDS)
def test_a_dribbled_answer_is_cut_at_the_request_deadline(sim: Simulator, tmp_path: Path,
                                                          kind: str) -> None:  # fmt: skip
    """Each byte arrives well within the read timeout, the whole answer ~20 s late: the request
    ends at connect + read timeout (0.3 + 0.5 s) as a transport timeout, whatever the reads do."""
    sim.dribble_s = 0.1
    settings = make_settings(
        sim, tmp_path, JOBTRACKER_READ_TIMEOUT="0.5", JOBTRACKER_CONNECT_TIMEOUT="0.3"
    )
    started = time.monotonic()
    error = query_error(kind, "dribble-x", settings)
    elapsed = time.monotonic() - started
    assert (type(error), error.code) == (TransientProviderError, "Transport.Timeout")
    assert "within 0.8 s" in error.message
    assert elapsed < 2.0, elapsed
    # The client still works for the next job (the cut connection is not reused).
    assert query(kind, "succeed-1-after-dribble", settings).status == JobStatus.SUCCEEDED


@pytest.mark.parametrize("step", ["huge", "gzipbomb"])
def test_an_oversized_answer_is_refused_while_it_streams(
    sim: Simulator, tmp_path: Path, step: str
) -> None:
    """64 MiB of JSON without a Content-Length, or 256 KiB of gzip that inflates to 256 MiB:
    reading stops past the 1 MiB cap, so neither the network nor memory pays for the rest."""
    # A generous deadline: the cap, not the clock, must end it.
    settings = make_settings(sim, tmp_path, JOBTRACKER_READ_TIMEOUT="10")
    tracemalloc.start()
    try:
        error = query_error("image_animate", f"{step}-x", settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (type(error), error.code) == (UnexpectedAnswer, "Transport.BadAnswer")
    assert "too large" in error.message
    assert peak < 16 * 1024 * 1024, f"{peak / 2**20:.1f} MiB held while reading"
    if step == "huge":
        assert sim.counters().bytes_sent < 16 * 1024 * 1024  # stopped reading early
