"""jobtracker: tracks asynchronous Tencent Cloud jobs and fires signed completion callbacks.

``celery -A worker worker`` and ``celery -A worker beat`` find the Celery app here. Other Python
services enqueue with :func:`track`.
"""

from __future__ import annotations

from worker.flow.enqueue import track
from worker.runtime.app import app

__all__ = ["app", "track"]
