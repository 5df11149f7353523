"""M&V for every demand-response event, from the operators' or from a VTN: measured from the
store's 1 s samples while it runs (the newest figures an immutable mapping the VEN's reports
and the metrics read), and kept in the store once it is over (table `event_performance`), so
its figures outlive the samples' retention.

`measure` is the one way an event is measured: the keeper runs it here, the API process runs it
for an event it has no kept figures of yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from controller.mv import MvSettings, Performance, Samples, Span
from controller.mv_history import Query, history_for, performance_of
from controller.operations import event_of
from controller.store import Store

log = logging.getLogger("gridpilot.mv")
SETTLE_S = 3.0  # an event's last samples reach the store within this after it ends
RECENT_S = 86400.0  # events that ended within this are measured (and kept) if not yet
EVENTS = (
    "SELECT * FROM dr_events WHERE started_at IS NOT NULL"
    " AND coalesce(cancelled_at, end_s) > ? ORDER BY id"
)


def span_of(row: Mapping[str, Any]) -> Span:
    """When an event was in force: from its start to its end, or to its cancellation."""
    end = row["end_s"] if row["cancelled_at"] is None else min(row["end_s"], row["cancelled_at"])
    return row["start_s"], max(row["start_s"], end)


def measure(
    query: Query,
    row: Mapping[str, Any],
    others: list[Span],
    now_s: float,
    s: MvSettings,
    history: Samples | None = None,
) -> Performance:
    start, end = span_of(row)
    event = replace(event_of(dict(row)), end_s=end)
    other = [span for span in others if span != (start, end)]
    return performance_of(query, event, now_s, s, other, history)


def rows_of(query: Query, since_s: float) -> list[dict[str, Any]]:
    names = [r[1] for r in query("PRAGMA table_info(dr_events)", ())]
    return [dict(zip(names, r, strict=True)) for r in query(EVENTS, (since_s,))]


class MvKeeper:
    def __init__(self, store: Store, settings: MvSettings, every_s: float = 5.0) -> None:
        self.store, self.settings, self.every_s = store, settings, every_s
        self.latest: Mapping[int, Performance] = MappingProxyType({})  # running events'
        self._kept: set[int] = set()
        # Each running event's previous days, read once: they do not change while it runs.
        self._history: dict[int, Samples] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.refresh, time.time())
            except Exception:  # a bad measurement must not stop the next
                log.exception("M&V refresh failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)

    def refresh(self, now_s: float) -> None:
        # One connection for the whole refresh: on a connection each, its hundreds of small
        # reads took 0.6–0.8 s of CPU with a dozen events running, and the GIL from the ticks.
        with self.store.reading() as query:
            self._refresh(query, now_s)

    def _refresh(self, query: Query, now_s: float) -> None:
        rows = rows_of(query, now_s - RECENT_S)
        spans = [span_of(r) for r in rows]
        if not self._kept:
            self._kept = {r[0] for r in query("SELECT event_id FROM event_performance", ())}
        running: dict[int, Performance] = {}
        for row in rows:
            if row["id"] in self._kept:
                continue
            history = self._history.get(row["id"])
            if history is None:
                start, end = span_of(row)
                history = self._history[row["id"]] = history_for(query, start, end, self.settings)
            perf = measure(query, row, spans, now_s, self.settings, history)
            if span_of(row)[1] + SETTLE_S <= now_s:
                self.store.keep_performance(row["id"], perf.to_json(), now_s)
                self._kept.add(row["id"])
                self._history.pop(row["id"], None)
                log.info("event measured", extra=_summary(perf))
            else:
                running[row["id"]] = perf
        self.latest = MappingProxyType(running)

    def baseline_w(self, event_id: int) -> float | None:
        perf = self.latest.get(event_id)
        return perf.baseline.mean_w if perf is not None else None


def _summary(p: Performance) -> dict[str, Any]:
    return {
        "event_id": p.event_id,
        "baseline_w": p.baseline.mean_w,
        "response_time_s": p.response_time_s,
        "held": p.held,
        "energy_not_drawn_j": p.energy_not_drawn_j,
    }


def kept(query: Query, event_id: int) -> dict[str, Any] | None:
    try:
        rows = query("SELECT figures FROM event_performance WHERE event_id = ?", (event_id,))
    except sqlite3.OperationalError:  # a file no store has opened yet: nothing kept
        return None
    return json.loads(rows[0][0]) if rows else None


def totals(latest: Mapping[int, Performance]) -> dict[str, float]:
    """The running events' asked and delivered reduction, W, added up (for the metrics)."""
    asked = sum(p.asked_w for p in latest.values() if _known(p.asked_w))
    delivered = sum(p.delivered_mean_w for p in latest.values() if _known(p.delivered_mean_w))
    return {"asked_w": asked, "delivered_w": delivered, "running": float(len(latest))}


def _known(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
