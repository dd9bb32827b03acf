"""What one retention run removed, or, as a dry run, would remove."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class PruneReport:
    """What one run removed (or, with ``dry_run``, would remove)."""

    dry_run: bool
    #: Finished before this: eligible (None: job retention off).
    cutoff: datetime | None
    jobs: int = 0
    transitions: int = 0
    deliveries: int = 0
    attempts: int = 0
    #: Attempts of delivered callbacks removed ahead of their jobs.
    delivered_attempts: int = 0
    tombstones_expired: int = 0
    batches: int = 0
    seconds: float = 0.0
    #: True when the run stopped at its time budget with work left (the next run goes on).
    incomplete: bool = False
    archive: str | None = None
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return (
            self.jobs
            + self.transitions
            + self.deliveries
            + self.attempts
            + self.delivered_attempts
            + self.tombstones_expired
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cutoff"] = self.cutoff.isoformat() if self.cutoff else None
        out["rows"] = self.rows
        out["seconds"] = round(self.seconds, 3)
        return out
