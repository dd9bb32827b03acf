"""Plain-text rendering for the CLI: aligned tables, ages, and the ``show`` / ``stats`` pages.

Input is the JSON-ready dicts of :mod:`worker.inspection.queries`, so the text and ``--json``
outputs always say the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from tabulate import tabulate

from jobtracker.models import JobStatus
from worker.inspection.queries import RECENT_JOBS

#: Cells longer than this are cut (with an ellipsis) in tables; ``show`` prints them whole.
MAX_CELL = 60


def format_age(seconds: float) -> str:
    """``42s``, ``12m05s``, ``3h12m``, ``2d04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_time(value: str | None, now: datetime | None = None) -> str:
    """An ISO timestamp as ``2024-05-01 12:03:04``, with its age when ``now`` is given."""
    if not value:
        return "-"
    moment = datetime.fromisoformat(value)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if now is not None:
        delta = (now - moment).total_seconds()
        text += f" ({format_age(delta)} ago)" if delta >= 0 else f" (in {format_age(-delta)})"
    return text


def ago(value: str | None, now: datetime) -> str:
    if not value:
        return "-"
    return format_age((now - datetime.fromisoformat(value)).total_seconds())


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _cut(value: Any, limit: int) -> str:
    text = " ".join(_text(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, max_cell: int = MAX_CELL
) -> str:
    """An aligned table; numeric columns are right-aligned, long cells cut at ``max_cell``.

    tabulate measures each cell's display width (wcwidth), so provider messages in Chinese and
    other wide characters stay aligned. Its own number parsing is off: a JobId or a raw status
    of digits is text, and only columns of real numbers are right-aligned.
    """
    numeric = [
        any(_is_number(r[i]) for r in rows) and all(_is_number(r[i]) or r[i] is None for r in rows)
        for i in range(len(headers))
    ]
    text = tabulate(
        [[_cut(cell, max_cell) for cell in row] for row in rows],
        headers=list(headers),
        tablefmt="plain",
        disable_numparse=True,
        colalign=["right" if num else "left" for num in numeric],
    )
    return "\n".join(line.rstrip() for line in text.splitlines())


def _error_text(job: Mapping[str, Any]) -> str | None:
    if job.get("error"):
        return f"{job['error']['code']}: {job['error']['message']}"
    if job.get("last_error"):
        return f"(retrying) {job['last_error']['code']}: {job['last_error']['message']}"
    return None


def jobs_table(jobs: Sequence[Mapping[str, Any]], now: datetime) -> str:
    return table(
        ["ID", "KIND", "REGION", "JOB_ID", "STATUS", "PROVIDER", "POLLS", "AGE", "ERROR"],
        [
            [
                j["id"],
                j["kind"],
                j["region"],
                j["job_id"],
                j["status"],
                j["provider_status"],
                j["polls"],
                ago(j["created_at"], now),
                _error_text(j),
            ]
            for j in jobs
        ],
    )


def _last_result(d: Mapping[str, Any]) -> str | None:
    if d["last_error"]:
        return d["last_error"]
    return None if d["last_status_code"] is None else f"HTTP {d['last_status_code']}"


def deliveries_table(deliveries: Sequence[Mapping[str, Any]], now: datetime) -> str:
    return table(
        ["ID", "JOB", "EVENT", "STATUS", "ATTEMPTS", "LAST", "NEXT", "AGE", "URL"],
        [
            [
                d["id"],
                d["tracked_job_id"],
                d["event_type"],
                d["status"],
                d["attempts"],
                _last_result(d),
                _next(d, now),
                ago(d["created_at"], now),
                d["url"],
            ]
            for d in deliveries
        ],
    )


def breakers_table(breakers: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """``jobtracker breakers``: destinations that time out, and when the next probe goes."""

    def probe(b: Mapping[str, Any]) -> str:
        if b["state"] != "open" or not b["probe_at"]:
            return "-"
        delta = (datetime.fromisoformat(b["probe_at"]) - now).total_seconds()
        return "now" if delta <= 0 else f"in {format_age(delta)}"

    return table(
        ["DESTINATION", "STATE", "TIMEOUTS IN A ROW", "OPEN SINCE", "NEXT PROBE"],
        [
            [
                b["destination"],
                b["state"],
                b["timeouts"],
                ago(b["opened_at"], now) + " ago" if b["opened_at"] else "-",
                probe(b),
            ]
            for b in breakers
        ],
    )


def _next(d: Mapping[str, Any], now: datetime) -> str:
    if not d["next_attempt_at"]:
        return "-"
    delta = (datetime.fromisoformat(d["next_attempt_at"]) - now).total_seconds()
    return "now" if delta <= 0 else f"in {format_age(delta)}"


def job_page(detail: Mapping[str, Any], now: datetime) -> str:
    """``jobtracker show``: the job, its history, its callbacks and their attempts."""
    job = detail["job"]
    fields: list[tuple[str, Any]] = [
        ("id", job["id"]),
        ("kind", job["kind"]),
        ("region", job["region"]),
        ("job_id", job["job_id"]),
        ("status", job["status"]),
        ("provider_status", job["provider_status"]),
        ("error", job["error"] and f"{job['error']['code']}: {job['error']['message']}"),
        (
            "last_error",
            job["last_error"] and f"{job['last_error']['code']}: {job['last_error']['message']}",
        ),
        ("polls", job["polls"]),
        ("created_at", format_time(job["created_at"], now)),
        ("last_polled_at", format_time(job["last_polled_at"], now)),
        ("next_poll_at", format_time(job["next_poll_at"], now)),
        ("deadline_at", format_time(job["deadline_at"], now)),
        ("finished_at", format_time(job["finished_at"], now)),
        ("callback_url", job["callback_url"]),
        ("metadata", job["metadata"] or None),
        ("result", job["result"]),
        ("result_expires_at", format_time(job["result_expires_at"], now)),
    ]
    width = max(len(name) for name, _ in fields)
    lines = [f"{name.ljust(width)}  {_text(value)}" for name, value in fields]

    lines += ["", f"Transitions ({len(detail['transitions'])})"]
    if detail["transitions"]:
        lines.append(
            table(
                ["AT", "FROM", "TO", "PROVIDER", "REQUEST_ID", "REASON"],
                [
                    [
                        format_time(t["at"]),
                        t["from_status"],
                        t["to_status"],
                        t["provider_status"],
                        t["request_id"],
                        t["reason"],
                    ]
                    for t in detail["transitions"]
                ],
                max_cell=300,
            )
        )

    lines += ["", f"Deliveries ({len(detail['deliveries'])})"]
    if not detail["deliveries"] and not job["callback_url"]:
        lines.append("no callback URL: nothing to deliver")
    for d in detail["deliveries"]:
        lines.append(
            f"{d['id']}  {d['event_type']}  {d['status']}  attempts={d['attempts']}"
            + (f"  next {_next(d, now)}" if d["next_attempt_at"] else "")
            + f"  {d['url']}"
        )
        attempts = d.get("attempt_log") or []
        if attempts:
            rows = [
                [
                    format_time(a["attempted_at"]),
                    a["status_code"],
                    a["error_class"],
                    a["latency_ms"],
                    a["error_message"],
                ]
                for a in attempts
            ]
            table_text = table(["AT", "HTTP", "ERROR", "MS", "MESSAGE"], rows, max_cell=300)
            lines.extend("  " + row for row in table_text.splitlines())
    return "\n".join(lines)


def stats_page(stats: Mapping[str, Any]) -> str:
    """``jobtracker stats`` as text."""
    statuses = [s.value for s in JobStatus]
    rows: list[list[Any]] = []
    totals = dict.fromkeys(statuses, 0)
    for kind, counts in stats["jobs"].items():
        rows.append([kind, *(counts[s] for s in statuses), sum(counts.values())])
        for s in statuses:
            totals[s] += counts[s]
    rows.append(["total", *(totals[s] for s in statuses), stats["jobs_total"]])
    lines = [table(["KIND", *(s.upper() for s in statuses), "TOTAL"], rows), ""]

    oldest = stats["oldest_active"]
    lines.append(
        "oldest active job: "
        + (
            ", ".join(
                f"{status} {format_age(o['age_s'])} ({o['kind']})" for status, o in oldest.items()
            )
            or "none"
        )
    )
    polls = stats["polls_per_finished_job"]
    lines.append(
        "polls per finished job: "
        + (
            "; ".join(
                f"{kind} avg {p['avg']:g} over {p['jobs']} jobs "
                f"(max {p['max_recent']} in the newest {RECENT_JOBS}"
                + (
                    f", detection within {p['detection_bound_s']:g} s on average)"
                    if p.get("detection_bound_s") is not None
                    else ")"
                )
                for kind, p in polls.items()
            )
            or "no finished job yet"
        )
    )
    lines.append("deliveries: " + ", ".join(f"{s} {n}" for s, n in stats["deliveries"].items()))
    for kind, learned in (stats.get("durations") or {}).items():
        lines.append(f"schedule {kind}: " + _schedule_text(learned))
    lines.append(
        "unpollable: "
        + (
            ", ".join(
                f"{n} active job(s) of unknown kind {kind!r}"
                for kind, n in stats["unpollable"].items()
            )
            + " (no provider polls them; they expire at their deadline)"
            if stats["unpollable"]
            else "none"
        )
    )
    troubled = [p for p in stats["providers"] if p["paused"] or p["throttled"]]
    if not troubled:
        lines.append("providers: none paused or throttled")
    for p in troubled:
        if p["paused"]:
            lines.append(
                f"provider {p['kind']}: PAUSED since {format_time(p['paused_at'])}: "
                f"{p['paused_reason']} (next probe {format_time(p['next_probe_at'])})"
            )
        if p["throttled"]:
            lines.append(
                f"provider {p['kind']}: throttled until {format_time(p['throttled_until'])} "
                f"({p['consecutive_throttles']} in a row)"
            )
    return "\n".join(lines)


def clients_table(clients: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """``jobtracker clients list``: no token or secret, only which tokens exist."""
    rows = []
    for c in clients:
        tokens = ", ".join(
            t["prefix"] + (f" (until {format_time(t['expires_at'])})" if t["expires_at"] else "")
            for t in c["tokens"]
        )
        secret = f"#{c['secret_generation']}"
        if c["previous_secret_until"]:
            until = format_time(c["previous_secret_until"])
            secret += f" (+ #{c['secret_generation'] - 1} until {until})"
        rows.append(
            [
                c["name"],
                " ".join(c["scopes"]),
                ago(c["created_at"], now),
                "revoked " + ago(c["revoked_at"], now) + " ago" if c["revoked_at"] else "active",
                tokens or "-",
                secret,
                _callbacks_reach(c),
            ]
        )
    return table(
        ["client", "scopes", "age", "state", "tokens", "webhook secret", "callbacks reach"],
        rows,
        max_cell=80,
    )


def _callbacks_reach(client: Mapping[str, Any]) -> str:
    if "admin" in client["scopes"]:
        return "as JOBTRACKER_WEBHOOK_BLOCK_PRIVATE"
    return " ".join(["public", *(f"+ {n}" for n in client.get("networks", []))])


def _schedule_text(learned: Mapping[str, Any]) -> str:
    if learned["schedule"] != "adaptive":
        return (
            f"backoff ({learned['jobs']} finished jobs to learn from; the adaptive schedule needs "
            f"{learned['jobs_needed']})"
        )
    return (
        f"adaptive, learned from {learned['jobs']} jobs: p10 {learned['p10_s']} s, "
        f"p50 {learned['p50_s']} s, p90 {learned['p90_s']} s; first poll at "
        f"{learned['first_poll_s']} s; {learned['calls_per_job']} calls per job, detection "
        f"within {learned['detection_bound_s']} s (bound; expected "
        f"{learned['expected_calls']} calls, {learned['expected_latency_s']} s)"
    )
