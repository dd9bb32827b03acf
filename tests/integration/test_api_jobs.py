"""``jobtracker api`` over real HTTP, on SQLite and PostgreSQL: enqueue (idempotent, one
validator, strict bodies), read, list with stable pages, health, the OpenAPI document."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from jobtracker.models import TrackedJob, utcnow
from tests.integration.conftest import Api, unique
from tests.integration.test_enqueue import BAD_INPUTS
from worker.db import session_scope
from worker.errors import EnqueueError
from worker.flow.enqueue import track, validate
from worker.lifecycle.prune import prune


def count_jobs(api: Api) -> int:
    with session_scope(api.settings()) as session:
        return int(session.execute(select(func.count()).select_from(TrackedJob)).scalar_one())


def test_enqueue_is_idempotent_per_client_and_records_the_client(api: Api) -> None:
    owner = api.new_client("enqueue", "read")
    http = api.http(owner.token)
    body = {
        "kind": "video_face_fusion",
        "job_id": unique(),
        "callback_url": "https://hooks.example.com/x",
        "metadata": {"order": 42},
    }
    first = http.post("/v1/jobs", json=body)
    assert first.status_code == 201, first.text
    job = first.json()
    assert (job["status"], job["region"], job["metadata"]) == (
        "pending",
        "ap-guangzhou",
        {"order": 42},
    )
    assert job["client_id"] == owner.id
    # Again, even with other details: the same job back, unchanged.
    again = http.post("/v1/jobs", json={**body, "metadata": {"order": 43}})
    assert again.status_code == 200
    assert again.json()["id"] == job["id"] and again.json()["metadata"] == {"order": 42}
    # The column is plain SQL like the rest.
    with session_scope(api.settings()) as session:
        assert session.get(TrackedJob, job["id"]).client_id == owner.id  # type: ignore[union-attr]
    # Another region is another job.
    other = http.post("/v1/jobs", json={**body, "region": "ap-shanghai"})
    assert other.status_code == 201 and other.json()["id"] != job["id"]


def test_a_job_tracked_for_someone_else_is_a_conflict_that_discloses_nothing(api: Api) -> None:
    owner, rival = api.new_client("enqueue"), api.new_client("enqueue", "read")
    body = {"kind": "image_animate", "job_id": unique(), "metadata": {"secret": "of owner"}}
    assert api.http(owner.token).post("/v1/jobs", json=body).status_code == 201
    conflict = api.http(rival.token).post("/v1/jobs", json=body)
    assert conflict.status_code == 409
    assert conflict.json() == {
        "error": {
            "code": "already_tracked",
            "message": "this (kind, region, job_id) is already tracked for someone else",
        }
    }
    # Enqueued another way (Python here; the CLI, Celery and SQL leave client_id NULL too).
    other_path = unique()
    track("image_animate", other_path, settings=api.settings())
    refused = api.http(rival.token).post(
        "/v1/jobs", json={"kind": "image_animate", "job_id": other_path}
    )
    assert refused.status_code == 409 and refused.json() == conflict.json()
    # An admin may take over nothing either, but it may see the job: 200 with it.
    admin = api.new_client("admin")
    seen = api.http(admin.token).post("/v1/jobs", json=body)
    assert seen.status_code == 200 and seen.json()["client_id"] == owner.id


def test_a_pruned_job_posted_again_is_its_tombstone_not_a_new_job(api: Api) -> None:
    owner, rival = api.new_client("enqueue", "read"), api.new_client("enqueue")
    body = {"kind": "image_animate", "job_id": unique("pruned")}
    job = api.http(owner.token).post("/v1/jobs", json=body).json()
    with session_scope(api.settings()) as session:
        session.execute(
            update(TrackedJob)
            .where(TrackedJob.id == job["id"])
            .values(status="succeeded", finished_at=utcnow() - timedelta(days=400))
        )
    assert prune(api.settings(), older_than_s=86400 * 365).jobs == 1
    again = api.http(owner.token).post("/v1/jobs", json=body)
    assert again.status_code == 200, again.text
    assert (again.json()["id"], again.json()["status"]) == (job["id"], "succeeded")
    assert again.json()["pruned_at"] is not None
    # Someone else learns nothing more than for a job still tracked.
    assert api.http(rival.token).post("/v1/jobs", json=body).status_code == 409
    with session_scope(api.settings()) as session:
        assert session.get(TrackedJob, job["id"]) is None


def _api_body(change: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "image_animate", "job_id": unique("bad"), **change}


def _json_can_carry(change: dict[str, Any]) -> bool:
    try:
        json.dumps(change, allow_nan=False)
    except ValueError:
        return False  # NaN, Infinity: the strict body parser refuses them before validate()
    return True


@pytest.mark.parametrize(("change", "message"), [c for c in BAD_INPUTS if _json_can_carry(c[0])])
def test_every_bad_input_rule_is_a_422_naming_the_field_with_validates_message(
    api: Api, change: dict[str, Any], message: str
) -> None:
    """The same rules and messages as the CLI, Celery and Python: one validator."""
    body = _api_body(change)
    expected = body.copy()
    with pytest.raises(EnqueueError) as direct:
        validate(
            expected.pop("kind"), expected.pop("job_id"), **expected, default_region="ap-guangzhou"
        )
    before = count_jobs(api)
    # Encoded with ASCII escapes, as any JSON client may: a lone surrogate travels as \ud800.
    answer = api.http(api.new_client("enqueue").token).post(
        "/v1/jobs", content=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json() == {
        "error": {
            "code": "invalid_field",
            "message": direct.value.message,
            "field": next(iter(change)),
        }
    }
    assert message.lower() in answer.json()["error"]["message"].lower()
    assert count_jobs(api) == before


@pytest.mark.parametrize(
    ("body", "status", "field", "message"),
    [
        ({"job_id": "x"}, 422, "kind", "kind is required"),
        ({"kind": "image_animate"}, 422, "job_id", "job_id is required"),
        (
            {"kind": "image_animate", "job_id": "x", "callback": "https://h.example/"},
            422,
            "callback",
            "unknown field 'callback'",
        ),
        ({"kind": "image_animate", "job_id": 12}, 422, "job_id", "job_id must be a string"),
        ({"kind": None, "job_id": "x"}, 422, "kind", "unknown kind None"),
    ],
)
def test_missing_unknown_and_mistyped_fields(
    api: Api, body: dict[str, Any], status: int, field: str, message: str
) -> None:
    answer = api.http(api.new_client("enqueue").token).post("/v1/jobs", json=body)
    assert answer.status_code == status
    assert answer.json()["error"]["field"] == field
    assert message in answer.json()["error"]["message"]


JSON = "application/json"
OK = b'{"kind": "image_animate", "job_id": "x"}'
HOSTILE = [
    (b'{"kind": "image_animate", "job_id": ', JSON, 400, "invalid_json", "not valid JSON"),
    (b'{"kind": "image_animate", "kind": "image_animate", "job_id": "d"}', JSON, 400,
     "invalid_json", "appears twice"),
    (b'{"kind": "image_animate", "job_id": "n", "metadata": {"x": NaN}}', JSON, 400,
     "invalid_json", "NaN"),
    (b'{"kind": "image_animate", "job_id": "i", "metadata": {"x": -Infinity}}', JSON, 400,
     "invalid_json", "Infinity"),
    (b"[" + OK + b"]", JSON, 400, "invalid_json", "not an array"),
    (b'"image_animate"', JSON, 400, "invalid_json", "not a string"),
    (b"", JSON, 400, "invalid_json", "empty"),
    (b"\xff\xfe{}", JSON, 400, "invalid_json", "UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, JSON, 413, "body_too_large", "limit"),
    (OK, "application/x-www-form-urlencoded", 415, "unsupported_media_type", JSON),
    (OK, "text/plain", 415, "unsupported_media_type", JSON),
    (OK, "", 415, "unsupported_media_type", JSON),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "content_type", "status", "code", "message"), HOSTILE)
def test_malformed_or_hostile_bodies_are_a_clear_4xx_and_change_nothing(
    api: Api, raw: bytes, content_type: str, status: int, code: str, message: str
) -> None:
    before = count_jobs(api)
    headers = {"Content-Type": content_type} if content_type else {}
    answer = api.http(api.new_client("enqueue").token).post(
        "/v1/jobs", content=raw, headers=headers
    )
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert message in answer.json()["error"]["message"]
    assert count_jobs(api) == before


def test_body_cap_holds_for_a_chunked_body_with_no_length(api: Api) -> None:
    def chunks() -> Any:
        yield b'{"kind": "image_animate", "job_id": "big", "metadata": {"x": "'
        for _ in range(200):
            yield b"x" * 1024
        yield b'"}}'

    before = count_jobs(api)
    answer = api.http(api.new_client("enqueue").token).post(
        "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413
    assert count_jobs(api) == before


def test_read_one_job_by_id_and_by_job_id(api: Api) -> None:
    owner = api.new_client()
    http = api.http(owner.token)
    job_id = unique("with/slash")
    job = http.post("/v1/jobs", json={"kind": "image_animate", "job_id": job_id}).json()
    by_id = http.get(f"/v1/jobs/{job['id']}")
    assert by_id.status_code == 200
    assert set(by_id.json()) == {"job", "transitions", "deliveries"}
    assert by_id.json()["job"] == job
    by_name = http.get(f"/v1/jobs/image_animate/{job_id}", params={"region": "ap-guangzhou"})
    assert by_name.status_code == 200 and by_name.json()["job"]["id"] == job["id"]
    assert (
        http.get(f"/v1/jobs/image_animate/{job_id}", params={"region": "ap-beijing"}).status_code
        == 404
    )
    bad_kind = http.get(f"/v1/jobs/image_animation/{job_id}")
    assert bad_kind.status_code == 422 and bad_kind.json()["error"]["field"] == "kind"
    assert http.get("/v1/jobs/999999999").status_code == 404
    for bad in ("abc", "0", "-1", "9" * 30):
        bad_id = http.get(f"/v1/jobs/{bad}")
        assert bad_id.status_code == 422 and bad_id.json()["error"]["field"] == "id"
    too_long = http.get(f"/v1/jobs/{job['id']}", params={"wait": 61})
    assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "wait"


def _all_pages(http: Any, limit: int, between: Any = None, **params: Any) -> list[int]:
    seen: list[int] = []
    cursor = None
    while True:
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        answer = http.get("/v1/jobs", params=query)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert len(page["jobs"]) <= limit
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
        if between is not None:
            between()


def test_pages_are_stable_while_jobs_are_inserted(api: Api) -> None:
    owner = api.new_client()
    http = api.http(owner.token)
    ids = [
        http.post("/v1/jobs", json={"kind": "image_animate", "job_id": unique("page")}).json()["id"]
        for _ in range(23)
    ]
    other = api.new_client()
    api.http(other.token).post("/v1/jobs", json={"kind": "image_animate", "job_id": unique()})
    inserted: list[int] = []

    def insert_more() -> None:
        for _ in range(3):
            answer = http.post("/v1/jobs", json={"kind": "image_animate", "job_id": unique("new")})
            inserted.append(answer.json()["id"])

    seen = _all_pages(http, 5, between=insert_more)
    # Every job that existed is seen once, newest first; none of another client's.
    assert seen == sorted(ids, reverse=True)
    assert inserted and not set(inserted) & set(seen)
    # The new ones are at the top of a fresh listing.
    assert _all_pages(http, 200)[: len(inserted)] == sorted(inserted, reverse=True)


def test_list_filters_and_limits(api: Api) -> None:
    owner = api.new_client()
    http = api.http(owner.token)
    fusion = http.post("/v1/jobs", json={"kind": "video_face_fusion", "job_id": unique()}).json()
    http.post("/v1/jobs", json={"kind": "image_animate", "job_id": unique()})
    assert _all_pages(http, 50, kind="video_face_fusion") == [fusion["id"]]
    assert len(_all_pages(http, 50, status="active", since="1h")) == 2
    assert _all_pages(http, 50, status="terminal") == []
    for params, field in [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"status": "done"}, "status"),
        ({"kind": "fusion"}, "kind"),
        ({"since": "yesterday"}, "since"),
        ({"cursor": "bm9wZQ"}, "cursor"),
    ]:
        answer = http.get("/v1/jobs", params=params)
        assert answer.status_code == 422, params
        assert answer.json()["error"]["field"] == field
    # The admin sees everyone's.
    admin = api.http(api.new_client("admin").token)
    assert fusion["id"] in _all_pages(admin, 200, kind="video_face_fusion")


def test_health_readiness_and_the_generated_documentation(api: Api) -> None:
    http = api.http()
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    document = http.get("/openapi.json").json()
    assert {
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{kind}/{job_id}",
        "/v1/deliveries/{id}/redeliver",
        "/v1/deliveries/{id}/attempts",
        "/healthz",
        "/readyz",
    } <= set(document["paths"])
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["schema"]["properties"]) == {
        "kind",
        "job_id",
        "region",
        "callback_url",
        "metadata",
        "expected_duration_s",
    }
    assert document["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    unknown = http.get("/v2/nothing")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    wrong_method = api.http(api.new_client().token).delete("/v1/jobs")
    assert wrong_method.status_code == 405
    assert json.loads(wrong_method.text)["error"]["code"] == "method_not_allowed"
    # Without a token, nothing under /v1 is told apart: not even which paths exist.
    for method, path in (("DELETE", "/v1/jobs"), ("GET", "/v1/nothing")):
        assert http.request(method, path).status_code == 401
