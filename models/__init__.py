"""SQLAlchemy models: the tables users read with plain SQL (DESIGN.md "Tables").

The names below load on first use, all tables at once (``metadata`` must hold every table), so
``jobtracker.models.status`` (the status enum, plain Python) can be imported without SQLAlchemy:
the error tree and the provider table need it at every start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import MetaData

    from jobtracker.models.base import Base, UTCDateTime, utcnow
    from jobtracker.models.clients import ApiClient, ApiClientNetwork, ApiToken, Scope
    from jobtracker.models.jobs import JobTransition, TrackedJob
    from jobtracker.models.lifecycle import PrunedJob, RowTally
    from jobtracker.models.providers import ProviderState, RateLimit
    from jobtracker.models.status import (
        ACTIVE_STATUSES,
        ALLOWED_TRANSITIONS,
        TERMINAL_STATUSES,
        JobStatus,
        can_transition,
    )
    from jobtracker.models.webhooks import (
        DeliveryBreaker,
        DeliveryStatus,
        WebhookAttempt,
        WebhookDelivery,
    )

    metadata: MetaData

#: Where the names come from, in the order they are looked up.
_MODULES = ("status", "base", "clients", "jobs", "lifecycle", "providers", "webhooks")

__all__ = [
    "ACTIVE_STATUSES",
    "ALLOWED_TRANSITIONS",
    "TERMINAL_STATUSES",
    "ApiClient",
    "ApiClientNetwork",
    "ApiToken",
    "Base",
    "DeliveryBreaker",
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


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    modules = {module: importlib.import_module(f"{__name__}.{module}") for module in _MODULES}
    if name == "metadata":
        value: Any = modules["base"].Base.metadata
    else:
        value = next(getattr(m, name) for m in modules.values() if hasattr(m, name))
    globals()[name] = value
    return value
