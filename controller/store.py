"""SQLite store (WAL): controller events and one sample of the site per second.

Writes go through a writer thread (`controller/writer.py`) that owns the connection, so the
control loop never waits on the disk; a storage fault holds the writes and retries them, and
`close()` drains what is queued, so nothing accepted is lost.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from controller.dbfile import create
from controller.writer import Writer

Query = Callable[[str, tuple], list[tuple]]  # read-only SQL and its arguments in, rows out


def query_of(conn: sqlite3.Connection) -> Query:
    """Queries on one connection."""
    return lambda sql, args=(): conn.execute(sql, args).fetchall()


SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time_s REAL NOT NULL,        -- unix time
    kind TEXT NOT NULL,          -- controller_started, controller_stopped, mode_changed, ...
    device TEXT,
    detail TEXT NOT NULL         -- JSON
);
CREATE TABLE IF NOT EXISTS samples (
    time_s REAL PRIMARY KEY,     -- unix time of the tick
    mode TEXT NOT NULL,
    it_w REAL, cooling_w REAL, site_load_w REAL, grid_w REAL, grid_target_w REAL,
    battery_w REAL, grid_frequency_hz REAL,
    soc_ratio TEXT NOT NULL      -- JSON {device: ratio}
);
CREATE TABLE IF NOT EXISTS event_performance (
    event_id INTEGER PRIMARY KEY,  -- dr_events.id
    computed_at REAL NOT NULL,     -- unix time
    figures TEXT NOT NULL          -- JSON: controller/mv.py's Performance, once the event is over
);
"""


class Store:
    def __init__(self, path: Path) -> None:
        create(path)  # 0600 in a 0700 folder, if new (the operators' side usually made it)
        self.path = path
        # Open here so a bad path fails at start-up, not silently in the thread.
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=1000")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        self.writer = Writer("store")

    def _put(self, sql: str, args: tuple[Any, ...], what: str, sheddable: bool = False) -> None:
        self.writer.put(lambda: self._conn.execute(sql, args), what, sheddable)

    def event(self, kind: str, device: str | None = None, **detail: Any) -> None:
        self._put(
            "INSERT INTO events (time_s, kind, device, detail) VALUES (?, ?, ?, ?)",
            (time.time(), kind, device, json.dumps(detail)),
            f"event {kind}",
        )

    def sample(self, row: dict[str, Any]) -> None:
        cols = (
            "time_s",
            "mode",
            "it_w",
            "cooling_w",
            "site_load_w",
            "grid_w",
            "grid_target_w",
            "battery_w",
            "grid_frequency_hz",
        )
        args = [row.get(c) for c in cols] + [json.dumps(row.get("soc_ratio", {}))]
        self._put(
            f"INSERT OR REPLACE INTO samples ({', '.join(cols)}, soc_ratio) "
            f"VALUES ({', '.join('?' * (len(cols) + 1))})",
            tuple(args),
            "sample",
            sheddable=True,
        )

    def keep_performance(self, event_id: int, figures: dict[str, Any], now_s: float) -> None:
        self._put(
            "INSERT OR REPLACE INTO event_performance (event_id, computed_at, figures)"
            " VALUES (?, ?, ?)",
            (event_id, now_s, json.dumps(figures, allow_nan=False)),
            f"performance of event {event_id}",
        )

    def prune(self, before_s: float) -> None:
        """Delete samples and events older than `before_s` (unix time), on the writer."""
        for table in ("samples", "events"):
            self._put(f"DELETE FROM {table} WHERE time_s < ?", (before_s,), f"prune {table}")

    def close(self) -> None:
        self.writer.close()
        self._conn.close()

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """A read-only query, on a connection of its own (tests, tools)."""
        with self.reading() as query:
            return query(sql, args)

    @contextlib.contextmanager
    def reading(self) -> Iterator[Query]:
        """Read-only queries on one connection of their own, for a batch of reads: a new
        connection reads the schema again on its first statement (half a millisecond, the
        most of a small query's time)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as conn:
            yield query_of(conn)
