"""What operators ask the database: the queries behind ``jobtracker jobs/show/deliveries/stats``.

Every function takes a session and returns rows or plain dicts (JSON-ready); rendering them as
text is :mod:`worker.cli.tables`' job. Queries read only indexed columns where the table can be
large (``created_at``, ``status``, ``tracked_job_id``), and each returns a bounded result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobtracker.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    DeliveryBreaker,
    DeliveryStatus,
    JobStatus,
    JobTransition,
    ProviderState,
    PrunedJob,
    TrackedJob,
    WebhookAttempt,
    WebhookDelivery,
)
from jobtracker.models.jobs import ACTIVE_PREDICATE, FINISHED_PREDICATE, unknown_kind
from worker.adaptive.model import SCHEDULES
from worker.catalogue.table import PROVIDERS
from worker.errors import NotFoundError
from worker.lifecycle import tally
from worker.policy import AdaptivePolicy
from worker.settings import Settings

#: ``--status`` shortcuts for groups of statuses.
STATUS_GROUPS: dict[str, frozenset[JobStatus]] = {
    "active": ACTIVE_STATUSES,
    "terminal": TERMINAL_STATUSES,
}
_AGE_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_AGE_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


#: The longest age ``--since`` / ``?since=`` take: anything older than this is "everything", and
#: ``now`` minus it stays a date (``99999999999d`` would overflow one).
MAX_AGE = timedelta(days=100 * 365)


class NotAnAge(ValueError):
    """The text is no age at all (it may still be a time)."""


def parse_age(text: str) -> timedelta:
    """``"90s"``, ``"10m"``, ``"2h"``, ``"3d"``, ``"1w"`` or a sum such as ``"1h30m"``, at most
    :data:`MAX_AGE`; ValueError (a message for the user) otherwise."""
    cleaned = text.strip().lower()
    parts = _AGE_PART.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise NotAnAge(f"{_quoted(text)} is not an age such as 30s, 10m, 2h, 3d or 1h30m")
    seconds = sum(float(n) * _AGE_UNITS_S[u] for n, u in parts)
    if not seconds <= MAX_AGE.total_seconds():  # also inf, from 400 digits
        raise ValueError(f"{_quoted(text)} is longer than {MAX_AGE.days // 365} years")
    return timedelta(seconds=seconds)


def parse_time(text: str, *, now: datetime) -> datetime:
    """An age before ``now`` (``"2h"``) or an ISO-8601 time (UTC unless it names a zone)."""
    try:
        return now - parse_age(text)
    except NotAnAge:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{_quoted(text)} is neither an age (10m, 2h, 3d) nor an ISO-8601 time "
            "(2024-05-01T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is in year 0 in UTC
        raise ValueError(f"{_quoted(text)} is outside the years 1 to 9999 in UTC") from None


def _quoted(text: str, limit: int = 64) -> str:
    """A caller's text, cut, for quoting in an error."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def expand_statuses(names: Iterable[str]) -> list[str]:
    """Status names with ``active`` / ``terminal`` expanded, in enum order."""
    wanted: set[JobStatus] = set()
    for name in names:
        wanted |= STATUS_GROUPS[name] if name in STATUS_GROUPS else {JobStatus(name)}
    return [s.value for s in JobStatus if s in wanted]


# -- jobs ------------------------------------------------------------------------------------


def list_jobs(
    session: Session,
    *,
    now: datetime,
    statuses: Sequence[str] = (),
    kinds: Sequence[str] = (),
    since: timedelta | None = None,
    older_than: timedelta | None = None,
    limit: int = 50,
) -> list[TrackedJob]:
    """Jobs newest first. ``since`` / ``older_than`` bound the job's age (from ``created_at``)."""
    query = select(TrackedJob)
    if statuses:
        query = query.where(TrackedJob.status.in_(expand_statuses(statuses)))
    if kinds:
        query = query.where(TrackedJob.kind.in_(list(kinds)))
    if since is not None:
        query = query.where(TrackedJob.created_at >= now - since)
    if older_than is not None:
        query = query.where(TrackedJob.created_at <= now - older_than)
    query = query.order_by(TrackedJob.created_at.desc(), TrackedJob.id.desc()).limit(limit)
    return list(session.execute(query).scalars())


def find_job(session: Session, ref: Sequence[str], *, region: str | None = None) -> TrackedJob:
    """The job named by ``[ID]``, ``[JOB_ID]`` or ``[KIND, JOB_ID]``; raise NotFoundError.

    A lone whole number is first the tracked job's ``id``, then a JobId (image_animate JobIds
    are digits too); anything else is a provider JobId, which must then match one job (any kind,
    any region unless given).
    """
    by_id = len(ref) == 1 and ref[0].isdigit() and region is None
    if by_id and len(ref[0]) < 19:  # ids are 64-bit at most
        job = session.get(TrackedJob, int(ref[0]))
        if job is not None:
            return job
    *kind, job_id = ref
    query = select(TrackedJob).where(TrackedJob.job_id == job_id)
    if kind:
        query = query.where(TrackedJob.kind == kind[0])
    if region is not None:
        query = query.where(TrackedJob.region == region)
    matches = list(session.execute(query.order_by(TrackedJob.id).limit(10)).scalars())
    where = " ".join([*kind, job_id]) + (f" in {region}" if region else "")
    if not matches:
        message = (
            f"no tracked job with id or JobId {job_id}" if by_id else f"no tracked job {where}"
        )
        raise NotFoundError(message + _pruned_note(session, kind, job_id, region))
    if len(matches) > 1:
        found = ", ".join(f"{j.kind} {j.region} (id {j.id})" for j in matches)
        raise NotFoundError(f"JobId {job_id} matches several jobs: {found}; name one by id")
    return matches[0]


def _pruned_note(session: Session, kind: list[str], job_id: str, region: str | None) -> str:
    """Where the retention removed the job: say so, and how it ended."""
    query = select(PrunedJob).where(PrunedJob.job_id == job_id)
    if kind:
        query = query.where(PrunedJob.kind == kind[0])
    if region is not None:
        query = query.where(PrunedJob.region == region)
    pruned = session.execute(query.limit(1)).scalars().first()
    if pruned is None:
        return ""
    return (
        f" (pruned by the retention at {pruned.pruned_at:%Y-%m-%d %H:%M} UTC; "
        f"it had ended {pruned.status})"
    )


def job_detail(
    session: Session, job: TrackedJob, *, attempts_shown: int | None = None
) -> dict[str, Any]:
    """The job, its transitions (oldest first) and its callback messages with their attempts:
    every one, or with ``attempts_shown`` the newest that many (oldest first) and, in
    ``older_attempts``, whether there are older ones."""
    transitions = session.execute(
        select(JobTransition)
        .where(JobTransition.tracked_job_id == job.id)
        .order_by(JobTransition.id)
    ).scalars()
    deliveries = session.execute(
        select(WebhookDelivery)
        .where(WebhookDelivery.tracked_job_id == job.id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    ).scalars()
    shown = []
    for delivery in deliveries:
        if attempts_shown is None:
            shown.append(delivery.to_dict(attempts=attempts_of(session, delivery.id), payload=True))
            continue
        newest = attempts_page(session, delivery.id, limit=attempts_shown + 1)
        entry = delivery.to_dict(attempts=newest[:attempts_shown][::-1], payload=True)
        entry["older_attempts"] = len(newest) > attempts_shown
        shown.append(entry)
    return {
        "job": job.to_dict(),
        "transitions": [t.to_dict() for t in transitions],
        "deliveries": shown,
    }


# -- deliveries ------------------------------------------------------------------------------


def list_deliveries(
    session: Session,
    *,
    statuses: Sequence[str] = (),
    job: int | None = None,
    limit: int = 50,
) -> list[WebhookDelivery]:
    """Callback messages, newest first."""
    query = select(WebhookDelivery)
    if statuses:
        query = query.where(WebhookDelivery.status.in_(list(statuses)))
    if job is not None:
        query = query.where(WebhookDelivery.tracked_job_id == job)
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    return list(session.execute(query.limit(limit)).scalars())


def get_delivery(session: Session, delivery_id: str) -> WebhookDelivery:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise NotFoundError(f"no delivery {delivery_id!r}")
    return delivery


def attempts_of(session: Session, delivery_id: str) -> list[WebhookAttempt]:
    return list(
        session.execute(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.id)
        ).scalars()
    )


def attempts_page(
    session: Session, delivery_id: str, *, limit: int, before_id: int | None = None
) -> list[WebhookAttempt]:
    """A message's attempts newest first, ``limit`` of them, below ``before_id`` if given (one
    index range: ``ix_webhook_attempts_delivery_id``, however many attempts it has)."""
    query = select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
    if before_id is not None:
        query = query.where(WebhookAttempt.id < before_id)
    return list(session.execute(query.order_by(WebhookAttempt.id.desc()).limit(limit)).scalars())


def list_breakers(
    session: Session, *, open_only: bool = False, limit: int = 200
) -> list[dict[str, Any]]:
    """Callback destinations that are timing out: open breakers first, then by timeouts."""
    query = select(DeliveryBreaker)
    if open_only:
        query = query.where(DeliveryBreaker.opened_at.is_not(None))
    query = query.order_by(
        DeliveryBreaker.opened_at.is_(None),
        DeliveryBreaker.timeouts.desc(),
        DeliveryBreaker.destination,
    )
    return [b.to_dict() for b in session.execute(query.limit(limit)).scalars()]


def open_breakers(session: Session) -> int:
    """How many destinations have an open breaker (the table holds only troubled ones)."""
    return int(
        session.execute(
            select(func.count()).where(DeliveryBreaker.opened_at.is_not(None))
        ).scalar_one()
    )


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# -- stats -----------------------------------------------------------------------------------


def unpollable(session: Session) -> dict[str, int]:
    """Active jobs of a kind no provider of this tracker polls, by kind (a retired provider, a
    row from before the table rules): they can never be polled, and expire at their deadline."""
    rows = session.execute(
        select(TrackedJob.kind, func.count())
        .where(ACTIVE_PREDICATE, unknown_kind(PROVIDERS))
        .group_by(TrackedJob.kind)
    ).all()
    return {kind: int(n) for kind, n in rows}


def stats(session: Session, *, now: datetime) -> dict[str, Any]:
    """Counts by kind and status, oldest active jobs, polls per finished job, deliveries,
    provider states: the numbers an operator checks first.

    Nothing here counts rows: totals come from the tallies the database keeps
    (:mod:`worker.lifecycle.tally`), the oldest active jobs from one index seek each, and the
    largest number of polls from the newest finished jobs of each kind only.
    """
    tallies = tally.read(session)
    jobs: dict[str, dict[str, int]] = {}
    for (kind, status), counted in tallies.jobs.items():
        jobs.setdefault(kind, dict.fromkeys((s.value for s in JobStatus), 0))[status] = counted.rows
    oldest: dict[str, dict[str, Any]] = {}
    for (kind, status), created in tally.oldest_active(session, tallies.active_kinds()).items():
        age_s = (now - created).total_seconds()
        best = oldest.get(status)
        if best is None or age_s > best["age_s"]:
            oldest[status] = {"kind": kind, "age_s": round(age_s, 1)}

    polls: dict[str, dict[str, Any]] = {}
    for kind in tallies.kinds():
        done = tallies.finished(kind)
        if done.rows <= 0:
            continue
        polls[kind] = {
            "jobs": done.rows,
            "avg": round(done.polls / done.rows, 2),
            "max_recent": _max_recent_polls(session, kind),
            "detection_bound_s": (
                round(done.bound_s / done.bounded, 2) if done.bounded > 0 else None
            ),
        }

    deliveries = {s.value: tallies.deliveries.get(s.value, 0) for s in DeliveryStatus}
    providers = [
        provider_dict(state, now=now)
        for state in session.execute(select(ProviderState).order_by(ProviderState.kind)).scalars()
    ]
    return {
        "jobs": dict(sorted(jobs.items())),
        "jobs_total": sum(t.rows for t in tallies.jobs.values()),
        "oldest_active": {s.value: oldest[s.value] for s in JobStatus if s.value in oldest},
        "polls_per_finished_job": dict(sorted(polls.items())),
        "deliveries": deliveries,
        "providers": providers,
        "unpollable": unpollable(session),
    }


#: ``max_recent`` looks at this many of the newest finished jobs of a kind.
RECENT_JOBS = 1000


def _max_recent_polls(session: Session, kind: str) -> int:
    recent = (
        select(TrackedJob.polls)
        .where(TrackedJob.kind == kind, FINISHED_PREDICATE)
        .order_by(TrackedJob.finished_at.desc())
        .limit(RECENT_JOBS)
        .subquery()
    )
    return int(session.execute(select(func.max(recent.c.polls))).scalar_one() or 0)


def provider_dict(state: ProviderState, *, now: datetime) -> dict[str, Any]:
    throttled = state.is_throttled(now)
    return {
        "kind": state.kind,
        "paused": bool(state.paused),
        "paused_reason": state.paused_reason if state.paused else None,
        "paused_at": _ts(state.paused_at) if state.paused else None,
        "next_probe_at": _ts(state.next_probe_at) if state.paused else None,
        "throttled": throttled,
        "throttled_until": _ts(state.throttled_until) if throttled else None,
        "consecutive_throttles": state.consecutive_throttles,
    }


def durations(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per kind, what the adaptive schedule learned from its newest finished jobs (a bounded
    read through an index): quantiles of the duration, calls per job, detection latency bound,
    and the schedule in use."""
    out: dict[str, dict[str, Any]] = {}
    for kind in PROVIDERS:
        learned = SCHEDULES.learned(settings, kind)
        dist = learned.dist if learned is not None else None
        plan = learned.plan if learned is not None else None

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        out[kind] = {
            "schedule": "adaptive"
            if plan is not None and settings.poll_schedule == "adaptive"
            else "backoff",
            "jobs": learned.finished if learned is not None else 0,
            "jobs_needed": AdaptivePolicy().min_samples,
            "p10_s": rounded(dist.quantile(0.1)) if dist else None,
            "p50_s": rounded(dist.quantile(0.5)) if dist else None,
            "p90_s": rounded(dist.quantile(0.9)) if dist else None,
            "calls_per_job": rounded(learned.polls_per_job) if learned else None,
            "detection_bound_s": rounded(learned.detection_bound_s) if learned else None,
            "first_poll_s": rounded(plan.first_age()) if plan else None,
            "expected_calls": rounded(plan.calls) if plan else None,
            "expected_latency_s": rounded(plan.latency_s) if plan else None,
        }
    return out
