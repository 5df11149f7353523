"""The writer thread against a real SQLite file: a full disk holds the writes (in order) and
retries them until there is room; a job that fails for a bug is dropped, not retried forever."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from controller.writer import Writer


def test_a_full_disk_holds_the_writes_in_order_until_there_is_room(tmp_path: Path):
    conn = sqlite3.connect(tmp_path / "w.sqlite", check_same_thread=False, isolation_level=None)
    conn.execute("CREATE TABLE t (n INTEGER, blob BLOB)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk full"
    writer = Writer("test")
    for n in range(5):
        writer.put(lambda n=n: conn.execute("INSERT INTO t VALUES (?, ?)", (n, b"x" * 8192)), "row")
    deadline = time.monotonic() + 5
    while not writer.failing and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.failing and "full" in (writer.last_error or "")
    assert writer.pending >= 4  # held, not dropped
    conn.execute("PRAGMA max_page_count = 1073741823")  # room again
    assert writer.flush(10.0)
    assert not writer.failing and writer.failures_total >= 1 and writer.dropped_total == 0
    assert [n for (n,) in conn.execute("SELECT n FROM t")] == [0, 1, 2, 3, 4]
    writer.close()


def test_a_job_that_fails_for_a_bug_is_dropped_and_the_rest_go_on():
    done: list[str] = []

    def bug() -> None:
        raise ValueError("not a storage fault")

    writer = Writer("test")
    writer.put(bug, "a bad job")
    writer.put(lambda: done.append("after"), "the next job")
    assert writer.flush(5.0)
    assert done == ["after"] and writer.dropped_total == 1 and writer.failures_total == 0
    writer.close()


def test_at_shutdown_what_is_left_when_time_is_up_is_counted_lost_and_never_run_after():
    """A long queue at shutdown: after `close` returns, no job runs (the file may close), and
    those not started are counted as lost, not run half against a closed file."""
    ran: list[int] = []
    writer = Writer("test")
    for n in range(50):
        writer.put(lambda n=n: (time.sleep(0.05), ran.append(n)), f"slow {n}")
    writer.close(timeout_s=0.3)
    after_close = len(ran)
    time.sleep(0.3)
    assert len(ran) == after_close  # nothing ran after close returned
    assert 0 < after_close < 50
    assert writer.lost_total == 50 - after_close
    assert ran == list(range(after_close))  # in order, each whole
