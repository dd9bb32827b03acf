"""The status of a tracked job, and the table of the changes allowed between statuses.

Plain Python, no SQLAlchemy: the error tree and the provider table read the statuses, and they
load at every start (``jobtracker settings`` among them).
"""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    """Our status of a tracked job. The values are what the ``status`` column holds."""

    #: Enqueued; not yet answered by the provider.
    PENDING = "pending"
    #: The provider has the job waiting in its queue.
    QUEUED = "queued"
    #: The provider is working on the job.
    RUNNING = "running"
    #: The provider finished the job; ``result`` holds the output.
    SUCCEEDED = "succeeded"
    #: The provider failed the job, or does not know it; ``error_code`` says why.
    FAILED = "failed"
    #: The job was canceled at the provider.
    CANCELED = "canceled"
    #: jobtracker gave up at the job's deadline without a terminal answer.
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED}
)
ACTIVE_STATUSES = frozenset(set(JobStatus) - TERMINAL_STATUSES)

#: The only status changes that may happen. Statuses only move forward: a stale ``queued`` answer
#: for a ``running`` job is not a transition, and terminal statuses have no way out.
ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.QUEUED, JobStatus.RUNNING} | TERMINAL_STATUSES),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING} | TERMINAL_STATUSES),
    JobStatus.RUNNING: TERMINAL_STATUSES,
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
    JobStatus.EXPIRED: frozenset(),
}


def can_transition(from_status: JobStatus, to_status: JobStatus) -> bool:
    return to_status in ALLOWED_TRANSITIONS[from_status]
