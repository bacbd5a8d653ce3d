"""Leases: how one process takes a row for itself, the one mechanism for jobs, loop cycles,
schedule firings and outbox entries.

A lease is a timestamp column. A process takes the row by compare-and-set: one UPDATE that
stamps the column only if it is empty or older than `stale_before` (and the row matches the
caller's conditions), so of several processes at most one sees its update applied. While it
works it renews the stamp; a process that dies stops renewing, and once the stamp is stale
the next one takes the row over. Releasing empties the column.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import InstrumentedAttribute, Session


def take(
    session: Session,
    column: InstrumentedAttribute[Any],
    *where: ColumnElement[bool],
    stale_before: datetime,
    stamp: datetime,
    values: dict[str, Any] | None = None,
) -> bool:
    """Stamp `column` (and set `values`) on the rows matching `where` whose lease is empty or
    older than `stale_before`; True when a row was taken."""
    result: Any = session.execute(
        update(column.class_)
        .where(*where, column.is_(None) | (column < stale_before))
        .values({column.key: stamp, **(values or {})})
    )
    return bool(result.rowcount)


def renew(
    session: Session,
    column: InstrumentedAttribute[Any],
    *where: ColumnElement[bool],
    stamp: datetime,
) -> None:
    """Keep a lease this process holds (the caller's `where` names it: id, worker)."""
    session.execute(update(column.class_).where(*where).values({column.key: stamp}))
