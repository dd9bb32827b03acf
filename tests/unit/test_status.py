from __future__ import annotations

import pytest

from jobtracker.models import (
    ACTIVE_STATUSES,
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    JobStatus,
    can_transition,
)

ORDER = [JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING]


def test_every_status_has_an_entry() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(JobStatus)
    assert set(JobStatus) == ACTIVE_STATUSES | TERMINAL_STATUSES


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
def test_terminal_statuses_never_change(terminal: JobStatus) -> None:
    assert terminal.is_terminal
    assert not any(can_transition(terminal, other) for other in JobStatus)


def test_statuses_only_move_forward() -> None:
    for i, earlier in enumerate(ORDER):
        for later in ORDER[i + 1 :]:
            assert can_transition(earlier, later)
            assert not can_transition(later, earlier)
        assert not can_transition(earlier, earlier)
        assert all(can_transition(earlier, t) for t in TERMINAL_STATUSES)
