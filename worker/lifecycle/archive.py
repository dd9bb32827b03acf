"""The archive of pruned jobs: gzipped JSON Lines, one job per line with its transitions and its
callbacks (each with its attempts and payload), written to ``JOBTRACKER_ARCHIVE_DIR``."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobtracker.models import JobTransition, TrackedJob, WebhookAttempt, WebhookDelivery


class Archive:
    """Pruned rows as gzipped JSON Lines, written before the batch that deletes them commits
    (a batch that then fails leaves lines for rows still in the table: an audit may see a job
    twice, never miss one)."""

    def __init__(self, folder: Path, now: datetime) -> None:
        self.folder = folder
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        # Two runs in one second (two trackers, or a run and the CLI) must not share a file.
        self.path = folder / f"pruned-{stamp}-{uuid.uuid4().hex[:8]}.jsonl.gz"
        self._file: gzip.GzipFile | None = None

    def write(self, session: Session, jobs: Sequence[TrackedJob], delivery_ids: list[str]) -> None:
        ids = [job.id for job in jobs]
        transitions: dict[int, list[dict[str, Any]]] = {}
        for t in session.execute(
            select(JobTransition)
            .where(JobTransition.tracked_job_id.in_(ids))
            .order_by(JobTransition.id)
        ).scalars():
            transitions.setdefault(t.tracked_job_id, []).append(t.to_dict())
        attempts: dict[str, list[WebhookAttempt]] = {}
        deliveries: dict[int, list[dict[str, Any]]] = {}
        if delivery_ids:
            for a in session.execute(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id.in_(delivery_ids))
                .order_by(WebhookAttempt.id)
            ).scalars():
                attempts.setdefault(a.delivery_id, []).append(a)
            for d in session.execute(
                select(WebhookDelivery).where(WebhookDelivery.id.in_(delivery_ids))
            ).scalars():
                deliveries.setdefault(d.tracked_job_id, []).append(
                    d.to_dict(attempts=attempts.get(d.id, []), payload=True)
                )
        lines = [
            json.dumps(
                {
                    "job": job.to_dict(),
                    "transitions": transitions.get(job.id, []),
                    "deliveries": deliveries.get(job.id, []),
                },
                ensure_ascii=False,
                separators=(",", ":"),
                default=str,
            )
            for job in jobs
        ]
        if self._file is None:  # created at the first batch: a run with nothing leaves nothing
            self.folder.mkdir(parents=True, exist_ok=True)
            # Open across batches (closed by close()): one gzip member per run.
            self._file = gzip.GzipFile(self.path, "xb")
        self._file.write(("\n".join(lines) + "\n").encode())
        self._file.flush()

    @property
    def written(self) -> bool:
        return self._file is not None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
