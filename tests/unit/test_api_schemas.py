"""The API's declarations match the code they describe: the enqueue fields are exactly
``validate()``'s, and the documented response shapes name the keys the routes send."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime

from jobtracker.models import JobTransition, TrackedJob, WebhookAttempt, WebhookDelivery
from worker.api.schemas import (
    ENQUEUE_FIELDS,
    Attempt,
    AttemptPage,
    Delivery,
    Job,
    Transition,
    enqueue_body_schema,
)
from worker.flow.enqueue import validate

NOW = datetime(2026, 11, 24, tzinfo=UTC)


def test_the_api_accepts_exactly_the_fields_validate_accepts() -> None:
    """A field added to validate() (an enqueue hint, say) must be added to ENQUEUE_FIELDS: one
    entry, and the API passes it on to validate() like the other paths do."""
    parameters = inspect.signature(validate).parameters
    accepted = {name for name in parameters if name != "default_region"}
    assert set(ENQUEUE_FIELDS) == accepted
    required = {
        name
        for name, p in parameters.items()
        if p.default is inspect.Parameter.empty and name != "default_region"
    }
    assert set(enqueue_body_schema()["required"]) == required


def test_the_job_model_documents_what_to_dict_sends() -> None:
    job = TrackedJob(
        id=1, kind="image_animate", region="ap-guangzhou", job_id="j", status="pending"
    )
    assert set(Job.model_fields) == set(job.to_dict())


def test_transition_delivery_and_attempt_models_match_their_dicts() -> None:
    transition = JobTransition(id=1, from_status="pending", to_status="running", at=NOW)
    assert set(Transition.model_fields) == set(transition.to_dict())
    attempt = WebhookAttempt(id=1, delivery_id="msg_1", attempted_at=NOW)
    assert set(Attempt.model_fields) == set(attempt.to_dict())
    delivery = WebhookDelivery(id="msg_1", tracked_job_id=1, event_type="job.failed", url="u")
    full = delivery.to_dict(attempts=[attempt], payload=True)
    # The job's detail adds where the older attempts are (worker/api/queries.detail).
    assert set(Delivery.model_fields) == {*full, "attempt_log_next_cursor"}
    assert set(AttemptPage.model_fields) == {"attempts", "next_cursor"}
