"""M&V's cost on a store with a month of 1 s samples: how long one event's measurement takes
(its samples, the `before` window, and the same clock interval on the previous 30 days), for
events of several lengths, and what the keeper's refresh costs while one runs (the previous
days read once and kept). Prints its figures; asserts nothing.

    python bench/bench_mv.py [--days 31]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from controller.mv import MvSettings
from controller.mv_history import history_for
from controller.mv_keeper import measure
from controller.store import SCHEMA

DAY_S = 86400.0


def fill(path: Path, days: int, now_s: float) -> int:
    """`days` of samples a second, a daily shape with noise, written in one transaction."""
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    t = np.arange(now_s - days * DAY_S, now_s, 1.0)
    rng = np.random.default_rng(1)
    grid = 8e6 + 1e6 * np.sin(2 * np.pi * t / DAY_S) + rng.normal(0, 5e4, t.size)
    rows = ((float(a), "auto", float(g)) for a, g in zip(t, grid, strict=True))
    with conn:
        conn.executemany(
            "INSERT INTO samples (time_s, mode, grid_w, soc_ratio) VALUES (?, ?, ?, '{}')", rows
        )
    conn.close()
    return t.size


def timed(job, repeat: int = 3) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        job()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=31)
    args = parser.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "store.db"
        started = time.perf_counter()
        n = fill(path, args.days, now)
        took = time.perf_counter() - started
        print(f"store: {n:,} samples ({args.days} days at 1 s), written in {took:.1f} s")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

        def query(sql: str, params: tuple) -> list[tuple]:
            return conn.execute(sql, params).fetchall()

        s = MvSettings()
        print(f"{'event':>10} {'measure (s)':>12} {'previous days read (s)':>23} "
              f"{'refresh, days kept (s)':>23} {'baseline':>13} {'days':>5}")  # fmt: skip
        for length_s in (600.0, 3600.0, 4 * 3600.0):
            end = now - 60.0
            start = end - length_s
            row = {"id": 1, "kind": "import_cap", "value_w": 7e6, "start_s": start,
                   "end_s": end, "started_at": start, "cancelled_at": None}  # fmt: skip
            whole = timed(lambda r=row: measure(query, r, [], now, s))
            history = history_for(query, start, end, s)
            days = timed(lambda a=start, b=end: history_for(query, a, b, s))
            kept = timed(lambda r=row, h=history: measure(query, r, [], now, s, h))
            perf = measure(query, row, [], now, s, history)
            print(f"{length_s / 3600:>8.2f} h {whole:>12.3f} {days:>23.3f} {kept:>23.3f} "
                  f"{perf.baseline.method:>13} {perf.baseline.days or 0:>5}")  # fmt: skip
        conn.close()


if __name__ == "__main__":
    main()
