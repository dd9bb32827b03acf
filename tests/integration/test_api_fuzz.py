"""Hostile but well-formed input never gets a 5xx: hypothesis drives every endpoint's fields (the
body's, the path's, the query's, the token) through the real server on SQLite and PostgreSQL.

The text it draws holds what broke the API before: NUL characters (PostgreSQL text and JSONB
refuse them), lone UTF-16 surrogates (legal as JSON escapes, unencodable as UTF-8), numbers past
a float's range, ages and times past a date's range. Each answer must be below 500, and the
server must have logged no unexpected error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from jobtracker.models import JobStatus, TrackedJob, WebhookDelivery, utcnow
from tests.integration.conftest import Api, NewClient, unique
from worker.catalogue.table import PROVIDERS
from worker.db import session_scope
from worker.flow.transition import Move, transition_many

#: Per endpoint; the two backends double it. Enough to meet each kind of text several times.
EXAMPLES = 60
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SPECIALS = [
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "99999999999d",
    "9" * 400 + "s",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "1e309",
    "-1",
    "NaN",
    "../../etc",
    "msg_" + "0" * 26,
    "dGVzdA",
    "v1:99999999999999999999",
]
#: Any code point, surrogates included (hypothesis leaves them out by default).
hostile_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=40),
    st.sampled_from(SPECIALS),
    st.text(alphabet="0123456789smhdw.:-+TZ", max_size=30),
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, -(2**63) - 1, 10**400, -(10**400)])
    | st.floats(allow_nan=False, allow_infinity=False)
    | hostile_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(hostile_text, children, max_size=4)
    ),
    max_leaves=12,
)
kinds = st.sampled_from(list(PROVIDERS)) | hostile_text
callback_urls = (
    st.builds(
        lambda host, path: f"http://{host}/{path}",
        st.sampled_from(["example.com", "127.0.0.1:9", "[::1]", "xn--nxasmq6b.com", "a" * 300]),
        hostile_text,
    )
    | hostile_text
    | json_values
)
bodies = st.fixed_dictionaries(
    {"kind": kinds, "job_id": hostile_text | json_values},
    optional={
        "region": st.just("ap-guangzhou") | hostile_text | json_values,
        "callback_url": callback_urls,
        "metadata": st.dictionaries(hostile_text, json_values, max_size=5) | json_values,
        "expected_duration_s": json_values,
        "unknown": json_values,
    },
)


def path_part(text: str, *, slashes: bool = False) -> str:
    """``text`` percent-encoded as UTF-8 (lone surrogates as their 3 bytes, as a client may)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="/" if slashes else "")


def query(params: list[tuple[str, str]]) -> str:
    return "&".join(f"{name}={path_part(value)}" for name, value in params)


class Fuzz:
    """One client with a job and a callback message, and a checked way to call the server."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.client: NewClient = api.new_client()
        self.http = api.http(self.client.token)
        answer = self.http.post(
            "/v1/jobs",
            json={"kind": "image_animate", "job_id": unique(), "callback_url": "http://x.test/"},
        )
        assert answer.status_code == 201, answer.text
        self.job: dict[str, Any] = answer.json()
        with session_scope(api.settings()) as session:
            row = session.get(TrackedJob, self.job["id"])
            assert row is not None
            transition_many(session, [Move(row, JobStatus.FAILED)], now=utcnow())
            self.delivery_id = session.execute(
                select(WebhookDelivery.id).where(WebhookDelivery.tracked_job_id == row.id)
            ).scalar_one()

    def call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        answer = self.http.request(method, url, **kwargs)
        assert answer.status_code < 500, (method, url, kwargs, answer.status_code, answer.text)
        # A 4xx says what is wrong, in the one error format.
        if answer.status_code >= 400:
            assert answer.json()["error"]["message"], answer.text
        return answer


@pytest.fixture(scope="module")
def fuzz(api: Api) -> Iterator[Fuzz]:
    yield Fuzz(api)
    log = api.server.output()
    assert "unexpected error" not in log, log[-5000:]


@FUZZ
@given(body=bodies)
@example(body={"kind": "image_animate", "job_id": "j-nul", "metadata": {"a": "x\x00y"}})
@example(body={"kind": "image_animate", "job_id": "j-sur", "metadata": {"\ud800": 1}})
@example(body={"kind": "image_animate", "job_id": "j-url", "callback_url": "http://e.test/\ud800"})
@example(body={"kind": "image_animate", "job_id": "j-big", "expected_duration_s": 10**400})
@example(body={"\ud800": 1, "kind": "image_animate", "job_id": "j"})
def test_enqueue_fields(fuzz: Fuzz, body: dict[str, Any]) -> None:
    # ensure_ascii: a lone surrogate travels as its JSON escape, as any client may send it.
    raw = json.dumps(body).encode()
    fuzz.call("POST", "/v1/jobs", content=raw, headers={"Content-Type": "application/json"})


@FUZZ
@given(
    ref=st.integers(min_value=-(2**70), max_value=2**70).map(str) | hostile_text,
    wait=st.none() | hostile_text | st.sampled_from(["0.01", "nan", "inf", "-0", "1e-300"]),
    own=st.booleans(),
)
def test_job_by_id(fuzz: Fuzz, ref: str, wait: str | None, own: bool) -> None:
    target = str(fuzz.job["id"]) if own else path_part(ref)
    params = [] if wait is None else [("wait", wait)]
    fuzz.call("GET", f"/v1/jobs/{target}?{query(params)}")


@FUZZ
@given(
    kind=kinds, job_id=hostile_text, region=st.none() | hostile_text, wait=st.none() | hostile_text
)
def test_job_by_kind_and_job_id(
    fuzz: Fuzz, kind: str, job_id: str, region: str | None, wait: str | None
) -> None:
    params = [(n, v) for n, v in (("region", region), ("wait", wait)) if v is not None]
    url = f"/v1/jobs/{path_part(kind)}/{path_part(job_id, slashes=True)}?{query(params)}"
    fuzz.call("GET", url)


@FUZZ
@given(
    params=st.lists(
        st.tuples(st.sampled_from(["status", "kind", "since", "cursor", "limit"]), hostile_text),
        max_size=5,
    )
)
@example(params=[("since", "99999999999d")])
@example(params=[("since", "0001-01-01T00:00:00+14:00")])
@example(params=[("status", "\x00"), ("cursor", "\x00")])
def test_job_pages(fuzz: Fuzz, params: list[tuple[str, str]]) -> None:
    fuzz.call("GET", f"/v1/jobs?{query(params)}")


@FUZZ
@given(ref=hostile_text, own=st.booleans())
@example(ref="a\x00b", own=False)
def test_redeliver(fuzz: Fuzz, ref: str, own: bool) -> None:
    target = fuzz.delivery_id if own else path_part(ref)
    fuzz.call("POST", f"/v1/deliveries/{target}/redeliver")


@FUZZ
@given(
    ref=hostile_text,
    own=st.booleans(),
    params=st.lists(st.tuples(st.sampled_from(["cursor", "limit"]), hostile_text), max_size=3),
)
@example(ref="x", own=True, params=[("cursor", "YTE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5")])
def test_attempt_pages(fuzz: Fuzz, ref: str, own: bool, params: list[tuple[str, str]]) -> None:
    target = fuzz.delivery_id if own else path_part(ref)
    fuzz.call("GET", f"/v1/deliveries/{target}/attempts?{query(params)}")


@FUZZ
@given(
    token=st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=80,
    )
)
@example(token="jt_" + "A" * 43)
@example(token="jt_" + "\xff" * 43)
def test_tokens(fuzz: Fuzz, token: str) -> None:
    # As bytes: any octet HTTP allows in a header (no control characters, no blank at the ends).
    header = f"Bearer {token}".strip().encode("latin-1")
    answer = fuzz.api.http().get("/v1/jobs", headers={"Authorization": header})
    assert answer.status_code in (401, 429), answer.text
