"""Hostile but well-formed input: each case that was a 500 is a 422 naming its field, nothing is
stored, and when the database itself refuses a row, the 500's log line quotes none of it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from jobtracker.models import TrackedJob
from tests.integration.conftest import Api, unique
from worker.db import get_engine, session_scope
from worker.settings import Settings


def post_raw(api: Api, token: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    # ensure_ascii: a lone surrogate travels as its JSON escape (\ud800), as any client may send.
    answer = api.http(token).post(
        "/v1/jobs", content=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    return answer.status_code, answer.json()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"metadata": {"note": "x\x00y"}}, "metadata"),  # JSONB refuses \u0000
        ({"metadata": {"\x00": 1}}, "metadata"),
        ({"metadata": {"note": "\ud800"}}, "metadata"),  # no UTF-8 for a lone surrogate
        ({"metadata": {"deep": [{"k": "\udfff"}]}}, "metadata"),
        ({"callback_url": "https://hooks.example.com/\ud800?token=s"}, "callback_url"),
        ({"expected_duration_s": 10**400}, "expected_duration_s"),  # past a float's range
        ({"\ud800": 1}, "\ufffd"),  # an unknown field is named as far as JSON can carry it
    ],
)
def test_unstorable_fields_are_a_422_naming_the_field(
    api: Api, extra: dict[str, object], field: str
) -> None:
    client = api.new_client()
    job_id = unique()
    status, body = post_raw(api, client.token, {"kind": "image_animate", "job_id": job_id, **extra})
    assert status == 422, body
    error = body["error"]
    assert isinstance(error, dict) and error["field"] == field and error["code"] == "invalid_field"
    with session_scope(api.settings()) as session:
        stored = session.execute(
            select(func.count()).select_from(TrackedJob).where(TrackedJob.job_id == job_id)
        ).scalar_one()
    assert stored == 0


@pytest.mark.parametrize(
    "since",
    ["99999999999d", "9" * 400 + "s", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59-14:00"],
)
def test_ages_and_times_past_a_dates_range_are_a_422(api: Api, since: str) -> None:
    answer = api.http(api.new_client().token).get("/v1/jobs", params={"since": since})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "since"


def test_a_delivery_id_that_cannot_exist_is_a_422(api: Api) -> None:
    answer = api.http(api.new_client().token).post("/v1/deliveries/msg_a%00b/redeliver")
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "id"


@pytest.fixture
def refusing_database(api: Api) -> Iterator[str]:
    """The database refuses jobs whose JobId starts with ``refuse-`` (a rule the API does not
    know of): a 500 the caller cannot avoid. Yields the prefix."""
    engine = get_engine(api.settings())
    if engine.dialect.name == "postgresql":
        install = [
            "ALTER TABLE tracked_jobs ADD CONSTRAINT test_refuse "
            "CHECK (job_id NOT LIKE 'refuse-%') NOT VALID"
        ]
        remove = ["ALTER TABLE tracked_jobs DROP CONSTRAINT test_refuse"]
    else:
        install = [
            "CREATE TRIGGER test_refuse BEFORE INSERT ON tracked_jobs "
            "WHEN NEW.job_id LIKE 'refuse-%' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ]
        remove = ["DROP TRIGGER test_refuse"]
    with engine.begin() as conn:
        for statement in install:
            conn.execute(text(statement))
    try:
        yield "refuse-"
    finally:
        with engine.begin() as conn:
            for statement in remove:
                conn.execute(text(statement))


def test_a_500_logs_what_failed_but_no_value_of_the_request(
    api: Api, refusing_database: str
) -> None:
    secret = f"tok-{uuid.uuid4().hex}"
    job_id = unique(refusing_database)
    status, body = post_raw(
        api,
        api.new_client().token,
        {
            "kind": "image_animate",
            "job_id": job_id,
            "callback_url": f"https://hooks.example.com/cb?token={secret}",
            "metadata": {"card": f"meta-{secret}"},
        },
    )
    assert status == 500, body
    assert body == {
        "error": {
            "code": "internal_error",
            "message": "internal error; the server logged the cause",
        }
    }
    log = api.server.output()
    [line] = [line for line in log.splitlines() if "unexpected error answering" in line]
    assert "POST /v1/jobs" in line
    # The cause is there: the class, and the statement without its values.
    assert "IntegrityError from the database" in log and "INSERT INTO tracked_jobs" in log
    # Neither the parameters (the callback URL, the metadata) nor PostgreSQL's "Failing row
    # contains (...)" detail, which quotes them all.
    assert secret not in log
    assert job_id not in log


def test_database_errors_quote_no_parameter(db_url: str) -> None:
    """Every engine hides parameters: an error's text, wherever it is logged, holds none."""
    secret = f"https://hooks.example.com/cb?token=tok-{uuid.uuid4().hex}"
    engine = get_engine(Settings.from_env({"JOBTRACKER_DATABASE_URL": db_url}))
    with pytest.raises(DBAPIError) as failed, engine.connect() as conn:
        conn.execute(
            text("SELECT no_such_column FROM tracked_jobs WHERE job_id = :u"), {"u": secret}
        )
    assert "no_such_column" in str(failed.value)
    assert secret not in str(failed.value) and "tok-" not in repr(failed.value)
