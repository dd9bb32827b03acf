"""jobtracker: tracks asynchronous Tencent Cloud jobs and fires signed completion callbacks.

Other Python services enqueue with :func:`track` (``from jobtracker import track``); the tables
are in :mod:`jobtracker.models` and the Alembic revisions in :mod:`jobtracker.migrations`. The
code itself lives in the ``worker`` package (``celery -A worker``, ``from worker import track``).

Names are resolved on first use, so importing ``jobtracker.models`` loads neither Celery nor the
flow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    from worker.flow.enqueue import track as track

    app: Celery

__all__ = ["app", "track"]


def __getattr__(name: str) -> Any:
    # Lazy: the package root is imported by every `jobtracker.models` import.
    import worker

    if name in __all__:
        return getattr(worker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
