from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.settings import DEFAULT_RETRY_SCHEDULE, Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def make(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(env, cwd=tmp_path)


def test_defaults_are_the_embedded_ones(tmp_path: Path) -> None:
    s = make(tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path / 'jobtracker.db'}"
    assert s.embedded_broker
    assert s.region == "ap-guangzhou"
    assert s.endpoints == {
        "video_face_fusion": "https://facefusion.tencentcloudapi.com",
        "image_animate": "https://vclm.intl.tencentcloudapi.com",
    }
    assert s.qps == {"video_face_fusion": 20.0, "image_animate": 20.0}
    assert s.job_deadline_s == 86400
    assert s.webhook_retry_schedule_s == DEFAULT_RETRY_SCHEDULE
    assert not s.has_credentials


def test_values_are_read_and_typed(tmp_path: Path) -> None:
    s = make(
        tmp_path,
        JOBTRACKER_DATABASE_URL="postgresql+psycopg://u:p@db/jt",
        JOBTRACKER_BROKER_URL="redis://redis:6379/0",
        TENCENTCLOUD_REGION="na-siliconvalley",
        JOBTRACKER_IMAGE_ANIMATE_ENDPOINT="http://127.0.0.1:18081/",
        JOBTRACKER_VIDEO_FACE_FUSION_QPS="5",
        JOBTRACKER_TICK_SECONDS="2.5",
        JOBTRACKER_POLL_INTERVAL_MIN="1",
        JOBTRACKER_POLL_INTERVAL_MAX="60",
        JOBTRACKER_WEBHOOK_SECRET=SECRET,
        JOBTRACKER_WEBHOOK_RETRY_SCHEDULE="1, 2,3",
        TENCENTCLOUD_SECRET_ID="AKIDexample",
        TENCENTCLOUD_SECRET_KEY="key",
    )
    assert not s.embedded_broker
    assert s.endpoints["image_animate"] == "http://127.0.0.1:18081"
    assert s.qps["video_face_fusion"] == 5.0
    assert (s.tick_seconds, s.poll_interval_min_s, s.poll_interval_max_s) == (2.5, 1.0, 60.0)
    assert s.webhook_secrets == (SECRET,)
    assert s.webhook_retry_schedule_s == (1.0, 2.0, 3.0)
    assert s.has_credentials


def test_secrets_are_not_in_the_repr(tmp_path: Path) -> None:
    s = make(
        tmp_path,
        TENCENTCLOUD_SECRET_ID="AKIDexample",
        TENCENTCLOUD_SECRET_KEY="very-secret-key",
        JOBTRACKER_WEBHOOK_SECRET=SECRET,
    )
    assert "very-secret-key" not in repr(s)
    assert SECRET not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOBTRACKER_DATABASE_URL": "not a url"}, "not a SQLAlchemy URL"),
        ({"JOBTRACKER_DATABASE_URL": "mysql://h/db"}, "not supported"),
        ({"JOBTRACKER_BROKER_URL": "kafka://h"}, "unsupported scheme"),
        ({"JOBTRACKER_VIDEO_FACE_FUSION_ENDPOINT": "facefusion.tencentcloudapi.com"}, "scheme"),
        ({"JOBTRACKER_IMAGE_ANIMATE_QPS": "0"}, "must be >= 0.1"),
        ({"JOBTRACKER_IMAGE_ANIMATE_QPS": "fast"}, "is not a number"),
        ({"JOBTRACKER_TICK_SECONDS": "-1"}, "JOBTRACKER_TICK_SECONDS"),
        ({"JOBTRACKER_POLL_INTERVAL_MIN": "-5"}, "JOBTRACKER_POLL_INTERVAL_MIN"),
        ({"JOBTRACKER_POLL_INTERVAL_MIN": "60", "JOBTRACKER_POLL_INTERVAL_MAX": "10"}, "below"),
        ({"JOBTRACKER_JOB_DEADLINE": "nan"}, "JOBTRACKER_JOB_DEADLINE"),
        ({"TENCENTCLOUD_REGION": "Guangzhou"}, "not a Tencent region"),
        ({"TENCENTCLOUD_SECRET_ID": "AKID"}, "both"),
        ({"JOBTRACKER_WEBHOOK_SECRET": "not-a-secret"}, "whsec_"),
        ({"JOBTRACKER_WEBHOOK_RETRY_SCHEDULE": "5,soon"}, "list of seconds"),
        ({"JOBTRACKER_WEBHOOK_RETRY_SCHEDULE": "5,-1"}, "non-negative"),
        ({"JOBTRACKER_LOG_FORMAT": "xml"}, "text"),
        ({"JOBTRACKER_METRICS_PORT": "70000"}, "between 0 and 65535"),
        ({"JOBTRACKER_WEBHOOK_BLOCK_PRIVATE": "maybe"}, "true or false"),
        ({"JOBTRACKER_API_PORT": "0"}, "JOBTRACKER_API_PORT"),
        ({"JOBTRACKER_API_HOST": "0.0.0.0; rm"}, "JOBTRACKER_API_HOST"),
        ({"JOBTRACKER_API_TRUSTED_PROXIES": "10.0.0.0/8,proxy"}, "'proxy' is not an IP"),
        ({"JOBTRACKER_API_MAX_BODY_BYTES": "10"}, "JOBTRACKER_API_MAX_BODY_BYTES"),
        ({"JOBTRACKER_API_RATE": "0"}, "JOBTRACKER_API_RATE"),
        ({"JOBTRACKER_API_BURST": "1.5"}, "JOBTRACKER_API_BURST"),
        ({"JOBTRACKER_API_ROTATION_GRACE": "-1"}, "JOBTRACKER_API_ROTATION_GRACE"),
        ({"JOBTRACKER_CLIENT_SECRET_KEY": "short"}, "JOBTRACKER_CLIENT_SECRET_KEY is 5 char"),
    ],
)
def test_bad_values_are_refused_at_start(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make(tmp_path, **env)


def test_a_bad_secret_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make(tmp_path, JOBTRACKER_WEBHOOK_SECRET="whsec_%%%supersecret%%%")
    assert "supersecret" not in str(info.value)


def test_a_database_password_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make(tmp_path, JOBTRACKER_DATABASE_URL="mysql://user:hunter2@h/db")
    assert "hunter2" not in str(info.value)


def test_service_api_settings(tmp_path: Path) -> None:
    s = make(tmp_path)
    assert (s.api_host, s.api_port, s.api_trusted_proxies) == ("127.0.0.1", 8080, ("127.0.0.1",))
    assert (s.api_max_body_bytes, s.api_rate_per_s, s.api_burst) == (65536, 20.0, 40)
    assert s.client_secret_key is None
    key = "k3y-" * 10
    s = make(
        tmp_path,
        JOBTRACKER_API_HOST="0.0.0.0",
        JOBTRACKER_API_PORT="9000",
        JOBTRACKER_API_TRUSTED_PROXIES="10.0.0.0/8, 192.168.1.7",
        JOBTRACKER_API_MAX_BODY_BYTES="2048",
        JOBTRACKER_API_RATE="5.5",
        JOBTRACKER_API_BURST="11",
        JOBTRACKER_API_ROTATION_GRACE="3600",
        JOBTRACKER_CLIENT_SECRET_KEY=key,
    )
    assert (s.api_host, s.api_port) == ("0.0.0.0", 9000)
    assert s.api_trusted_proxies == ("10.0.0.0/8", "192.168.1.7")
    assert (s.api_max_body_bytes, s.api_rate_per_s, s.api_burst) == (2048, 5.5, 11)
    assert s.api_rotation_grace_s == 3600
    assert s.client_secret_key == key.encode() and key not in repr(s)
    with pytest.raises(ConfigError) as info:
        make(tmp_path, JOBTRACKER_CLIENT_SECRET_KEY="tooshortsecret")
    assert "tooshortsecret" not in str(info.value)
