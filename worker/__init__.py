"""jobtracker: tracks asynchronous Tencent Cloud jobs and fires signed completion callbacks.

``celery -A worker worker`` and ``celery -A worker beat`` find the Celery app here. Other Python
services enqueue with :func:`track`. Both are loaded on first use, so a command that needs
neither (``jobtracker --help``) does not pay for Celery and the flow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    from worker.flow.enqueue import track as track

    app: Celery

__all__ = ["app", "track"]


def __getattr__(name: str) -> Any:
    if name == "track":
        # Start-up cost: the flow (SQLAlchemy, the provider table) loads when first asked for.
        from worker.flow.enqueue import track

        return track
    if name == "app":
        # Start-up cost: Celery and the tasks load when first asked for.
        from worker.runtime.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
