from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from worker.cli.settings import README_BEGIN, README_END, markdown_table
from worker.errors import ConfigError
from worker.policy import AdaptivePolicy, DeliveryPolicy, PollPolicy
from worker.settings import KINDS, Settings, parse
from worker.settings.declare import Members, as_text, declared, read, setting

ROOT = Path(__file__).resolve().parents[2]

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
    assert s.webhook_retry_schedule_s == (5, 300, 1800, 7200, 18000, 36000, 36000)
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


def test_a_family_error_names_the_member_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^JOBTRACKER_IMAGE_ANIMATE_QPS='0' must be >= 0\.1$"):
        make(tmp_path, JOBTRACKER_IMAGE_ANIMATE_QPS="0")
    with pytest.raises(ConfigError, match=r"^JOBTRACKER_VIDEO_FACE_FUSION_ENDPOINT='ftp://h'"):
        make(tmp_path, JOBTRACKER_VIDEO_FACE_FUSION_ENDPOINT="ftp://h")


def test_bounds_are_written_as_numbers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"must be between 1024 and 16777216$"):
        make(tmp_path, JOBTRACKER_API_MAX_BODY_BYTES="99999999")


@pytest.mark.parametrize(
    ("env", "name", "value"),
    [
        ({"JOBTRACKER_LOG_LEVEL": "debug"}, "log_level", "DEBUG"),
        ({"JOBTRACKER_LOG_FORMAT": "JSON"}, "log_format", "json"),
        ({"JOBTRACKER_POLL_SCHEDULE": " Backoff "}, "poll_schedule", "backoff"),
        ({"JOBTRACKER_POLL_EARLY_CHECK": "yes"}, "poll_early_check", True),
        ({"JOBTRACKER_BATCH_SIZE": "7"}, "batch_size", 7),
        ({"JOBTRACKER_TICK_SECONDS": ""}, "tick_seconds", 5.0),
    ],
)
def test_values_are_read_as_their_declaration_says(
    tmp_path: Path, env: dict[str, str], name: str, value: object
) -> None:
    read = getattr(make(tmp_path, **env), name)
    assert read == value and type(read) is type(value)


def test_paths_are_relative_to_the_working_directory(tmp_path: Path) -> None:
    s = make(tmp_path, JOBTRACKER_ARCHIVE_DIR="archive", JOBTRACKER_BROKER_DIR="/var/broker")
    assert s.archive_dir == tmp_path / "archive"
    assert s.broker_dir == Path("/var/broker")
    assert make(tmp_path).broker_dir == tmp_path / ".jobtracker-broker"
    assert make(tmp_path).archive_dir is None


def test_every_field_is_declared_and_every_variable_is_ours() -> None:
    names = [f.name for f in fields(Settings)]
    assert [s.field for s in declared(Settings)] == names
    variables = [v for s in declared(Settings) for _, v in s.variables({})]
    assert len(variables) == len(set(variables))
    assert all(v.startswith(("JOBTRACKER_", "TENCENTCLOUD_")) for v in variables)
    assert all(s.doc and "\n" not in s.doc for s in declared(Settings))


def test_each_default_written_as_its_variable_reads_back_the_same(tmp_path: Path) -> None:
    """What the README and `jobtracker settings` show as a default is the default."""
    defaults = make(tmp_path)
    for s in declared(Settings):
        for member, variable in s.variables({}):
            value = s.default_value(tmp_path, member)
            if as_text(value):
                again = getattr(make(tmp_path, **{variable: as_text(value)}), s.field)
                assert (again[member] if s.per else again) == value, variable
            field_default = getattr(defaults, s.field)
            assert (field_default[member] if s.per else field_default) == value, variable


def test_the_policies_start_from_the_declared_defaults(tmp_path: Path) -> None:
    defaults = make(tmp_path)
    assert AdaptivePolicy.from_settings(defaults) == AdaptivePolicy()
    assert DeliveryPolicy.from_settings(defaults) == DeliveryPolicy()
    assert PollPolicy().max_s == PollPolicy.from_settings(defaults).max_s


def test_the_readme_table_is_the_declarations() -> None:
    """Regenerate it with `jobtracker settings --markdown` between the two markers."""
    readme = (ROOT / "README.md").read_text()
    assert readme.count(README_BEGIN) == 1 and readme.count(README_END) == 1
    table = readme.split(README_BEGIN + "\n", 1)[1].split(README_END, 1)[0]
    assert table == markdown_table()


def test_a_variable_names_exactly_the_parts_its_families_vary() -> None:
    with pytest.raises(ValueError, match="varying parts"):
        setting("JOBTRACKER_{KIND}_QPS", 1.0, doc="no family")
    with pytest.raises(ValueError, match="varying parts"):
        setting("JOBTRACKER_QPS", 1.0, per=KINDS, doc="no placeholder")


#: The per-account settings to come, declared as the brief will need them: the members are the
#: names the environment uses, and a variable may vary per account and per kind at once.
ACCOUNTS = Members(
    "NAME",
    doc="an account named by a `JOBTRACKER_ACCOUNT_<NAME>_SECRET_ID`",
    names=lambda environ: tuple(
        sorted(
            m[1].lower()
            for v in environ
            if (m := re.fullmatch(r"JOBTRACKER_ACCOUNT_([A-Z0-9]+)_SECRET_ID", v))
        )
    ),
)


@dataclass(frozen=True, kw_only=True)
class AccountSettings:
    secret_ids: Mapping[str, str] = setting(
        "JOBTRACKER_ACCOUNT_{NAME}_SECRET_ID", per=ACCOUNTS, secret=True, doc="SecretId"
    )
    qps: Mapping[tuple[str, str], float] = setting(
        "JOBTRACKER_ACCOUNT_{NAME}_QPS_{KIND}",
        20.0,
        per=(ACCOUNTS, KINDS),
        minimum=0.1,
        doc="the account's own QPS per kind",
    )


def test_a_family_can_take_its_members_from_the_environment(tmp_path: Path) -> None:
    env = {
        "JOBTRACKER_ACCOUNT_MAIN_SECRET_ID": "AKIDmain",
        "JOBTRACKER_ACCOUNT_BACKUP_SECRET_ID": "AKIDbackup",
        "JOBTRACKER_ACCOUNT_MAIN_QPS_IMAGE_ANIMATE": "5",
    }
    values = read(AccountSettings, env, tmp_path)
    assert values["secret_ids"] == {"backup": "AKIDbackup", "main": "AKIDmain"}
    assert values["qps"][("main", "image_animate")] == 5.0
    assert values["qps"][("backup", "video_face_fusion")] == 20.0
    assert len(values["qps"]) == 2 * len(KINDS.names(env))
    with pytest.raises(ConfigError, match=r"^JOBTRACKER_ACCOUNT_MAIN_QPS_IMAGE_ANIMATE='0'"):
        read(AccountSettings, {**env, "JOBTRACKER_ACCOUNT_MAIN_QPS_IMAGE_ANIMATE": "0"}, tmp_path)
    assert read(AccountSettings, {}, tmp_path) == {"secret_ids": {}, "qps": {}}


#: make_url's verdicts, which the settings reproduce without importing SQLAlchemy.
DATABASE_URLS = [
    "sqlite://",
    "sqlite:///jobtracker.db",
    "sqlite:////abs/path.db",
    "sqlite:///:memory:",
    "postgresql://u:p@h/db",
    "postgresql+psycopg://u:p%40ss@h:5432/db?sslmode=require",
    "postgresql+psycopg://[::1]:5432/db",
    "postgresql://h:notaport/db",
    "postgresql://h:/db",
    "postgres://h/db",
    "mysql://user:hunter2@h/db",
    "not a url",
    "",
    "://h/db",
    "sqlite:/x.db",
    "postgresql+://h/db",
    "+psycopg://h/db",
    "pg sql://h",
]


def _make_url_verdict(url: str) -> str:
    try:
        backend = make_url(url).get_backend_name()
    except (ArgumentError, ValueError):
        return "not a SQLAlchemy URL"
    return "ok" if backend in ("sqlite", "postgresql") else "not supported"


def _our_verdict(url: str) -> str:
    try:
        parse.database_url(parse.Raw("JOBTRACKER_DATABASE_URL", url, Path(".")))
    except ConfigError as exc:
        return "not a SQLAlchemy URL" if "not a SQLAlchemy URL" in str(exc) else "not supported"
    return "ok"


@pytest.mark.parametrize("url", DATABASE_URLS)
def test_database_urls_are_judged_as_sqlalchemy_does(url: str) -> None:
    assert _our_verdict(url) == _make_url_verdict(url)


@given(
    st.from_regex(
        r"(sqlite|postgresql|postgres|mysql|x)?(\+[a-z]*)?(://)?([a-z@:/\[\]?=+% ]|[0-9]){0,24}",
        fullmatch=True,
    )
)
@settings(max_examples=300, deadline=None)
def test_database_url_verdicts_agree_with_make_url(url: str) -> None:
    assert _our_verdict(url) == _make_url_verdict(url)


def test_settings_load_no_sqlalchemy() -> None:
    """`jobtracker settings` and every command's start pay for the settings: keep them light."""
    code = "import sys, worker.settings; print(sorted(m for m in sys.modules if 'sqlalchemy' in m))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
