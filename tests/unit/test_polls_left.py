"""The reasons a poll batch leaves a job unasked are the label values of a metric: each one is
documented in the README, and none is documented that the code cannot give."""

from __future__ import annotations

import re
from pathlib import Path

from worker.flow.poll import Left

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_reason_is_in_the_readmes_metrics_table() -> None:
    row = next(
        line
        for line in README.read_text().splitlines()
        if line.startswith("| `jobtracker_polls_left_total`")
    )
    labels = row.split("|")[3]
    assert set(re.findall(r"`(\w+)`", labels)) == {"kind", "reason"} | {r.value for r in Left}
