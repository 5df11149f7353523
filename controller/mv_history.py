"""M&V's reads: the grid samples an event's measurement needs, from the store's `samples` table
(one row a second, keyed by time_s), and only those: the event's span, the `before` window, and
the event's clock interval on each of the previous `search_days` days. The figures themselves
are `controller/mv.py`'s, pure.

`query` is a `(sql, args) -> list[tuple]`: `Store.reading()`'s (one read-only connection for
a batch of reads, as the M&V keeper's refresh), `Store.query` (a connection for each call) or
the API's `OpsDB.query`; a `sqlite3.Connection` does too.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from controller.mv import DAY_S, MvSettings, Performance, Samples, Span, performance
from controller.store import Query, query_of

if TYPE_CHECKING:
    from controller.operations import Event

SELECT = "SELECT time_s, grid_w FROM samples WHERE "


def _query_of(conn_or_query: sqlite3.Connection | Query) -> Query:
    if isinstance(conn_or_query, sqlite3.Connection):
        return query_of(conn_or_query)
    return conn_or_query


def _samples_of(rows: list[tuple]) -> Samples:
    """Rows of (time_s, grid_w); a NULL grid_w (no reading) is NaN."""
    if not rows:
        return Samples.empty()
    t = np.fromiter((r[0] for r in rows), dtype=float, count=len(rows))
    g = np.fromiter((math.nan if r[1] is None else r[1] for r in rows), float, len(rows))
    return Samples(t, g)


def _load(query: Query, spans: Sequence[Span]) -> Samples:
    """The samples in any of the spans [lo, hi), sorted: one range read of the time index per
    span (ranges joined by OR scan the whole table: seconds on a month of samples)."""
    rows: list[tuple] = []
    for lo, hi in sorted(spans):
        rows += query(f"{SELECT}time_s >= ? AND time_s < ? ORDER BY time_s", (lo, hi))
    return _samples_of(rows)


def _merged(spans: Sequence[Span]) -> list[Span]:
    """Overlapping spans as one (an event longer than a day overlaps its previous days')."""
    out: list[Span] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def load_samples(
    conn_or_query: sqlite3.Connection | Query, start_s: float, end_s: float
) -> Samples:
    """The samples with start_s <= time_s < end_s."""
    return _load(_query_of(conn_or_query), [(start_s, end_s)])


def history_for(
    conn_or_query: sqlite3.Connection | Query, start_s: float, end_s: float, s: MvSettings
) -> Samples:
    """The event's clock interval [start, end) on each of the previous `search_days` days."""
    days = [(start_s - k * DAY_S, end_s - k * DAY_S) for k in range(1, s.search_days + 1)]
    return _load(_query_of(conn_or_query), _merged(days))


def performance_of(
    conn_or_query: sqlite3.Connection | Query,
    event: Event,
    now_s: float,
    s: MvSettings,
    other_events: Sequence[Span] = (),
    history: Samples | None = None,
) -> Performance:
    """An event's M&V from the store: its samples up to now, the `before` window's, and its
    previous days' (`history`: those read before, for an event measured again)."""
    query = _query_of(conn_or_query)
    stop = max(event.start_s, min(event.end_s, now_s))
    return performance(
        event.kind,
        event.value_w,
        event.start_s,
        event.end_s,
        event.id,
        during=load_samples(query, event.start_s, stop),
        before=load_samples(query, event.start_s - s.before_window_s, event.start_s),
        history=history_for(query, event.start_s, event.end_s, s) if history is None else history,
        now_s=now_s,
        s=s,
        other_events=other_events,
    )
