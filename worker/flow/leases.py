"""The one way rows are claimed: reserved under a lease, safely when two claimers race.

Jobs (the tick) and callback messages (a sender, the sweep) are claimed alike, in two statements:

1. ``SELECT id ... WHERE <due> ORDER BY ... LIMIT n FOR UPDATE SKIP LOCKED`` picks the rows;
2. ``UPDATE ... SET <lease> WHERE id IN (...) AND <due> RETURNING ...`` takes them.

On PostgreSQL the first statement locks what it picks and skips what a concurrent claimer locked.
On SQLite there are no row locks (``FOR UPDATE`` is not rendered) but writers are serialized, and
the second statement re-checks ``<due>``: the compare-and-set half of the claim, so a row another
claimer took since the SELECT is not taken twice.

Not ``UPDATE ... WHERE id IN (SELECT ... LIMIT n)``: PostgreSQL may run such a subquery once per
outer row, and with SKIP LOCKED each run then locks the next row, so the LIMIT would not hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, TextClause, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session


def claim(
    session: Session,
    model: type[Any],
    *,
    due: Sequence[ColumnElement[bool] | TextClause],
    order_by: InstrumentedAttribute[Any] | None,
    limit: int,
    values: dict[str, Any],
    returning: Sequence[Any],
    before: Sequence[InstrumentedAttribute[Any]] = (),
) -> list[tuple[Any, ...]]:
    """Claim up to ``limit`` rows of ``model`` matching ``due``; set ``values`` (the lease) on
    them and return, for each row taken, ``returning`` (as the UPDATE left the row) followed by
    ``before`` (as the SELECT read it, before the lease changed it). ``due`` must stop matching
    a row once ``values`` are set (a lease in the future), or a second claimer could take it
    again."""
    key = model.id
    query = select(key, *before).where(*due)
    if order_by is not None:
        query = query.order_by(order_by)
    chosen = {
        row[0]: tuple(row[1:])
        for row in session.execute(query.limit(limit).with_for_update(skip_locked=True))
    }
    if not chosen:
        return []
    taken = session.execute(
        update(model)
        .where(key.in_(list(chosen)), *due)
        .values(**values)
        .returning(key, *returning),
        execution_options={"synchronize_session": False},
    ).all()
    return [(*row[1:], *chosen[row[0]]) for row in taken]
