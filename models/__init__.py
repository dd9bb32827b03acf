"""SQLAlchemy models: the tables users read with plain SQL (DESIGN.md "Tables")."""

from jobtracker.models.base import Base, UTCDateTime, utcnow
from jobtracker.models.clients import ApiClient, ApiToken, Scope
from jobtracker.models.jobs import (
    ACTIVE_STATUSES,
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    JobStatus,
    JobTransition,
    TrackedJob,
    can_transition,
)
from jobtracker.models.lifecycle import PrunedJob, RowTally
from jobtracker.models.providers import ProviderState, RateLimit
from jobtracker.models.webhooks import DeliveryStatus, WebhookAttempt, WebhookDelivery

metadata = Base.metadata

__all__ = [
    "ACTIVE_STATUSES",
    "ALLOWED_TRANSITIONS",
    "TERMINAL_STATUSES",
    "ApiClient",
    "ApiToken",
    "Base",
    "DeliveryStatus",
    "JobStatus",
    "JobTransition",
    "ProviderState",
    "PrunedJob",
    "RateLimit",
    "RowTally",
    "Scope",
    "TrackedJob",
    "UTCDateTime",
    "WebhookAttempt",
    "WebhookDelivery",
    "can_transition",
    "metadata",
    "utcnow",
]
