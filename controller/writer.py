"""A writer thread: disk work handed over by those who must not wait on it (the control tick).

Jobs run in order on one thread. `put` never blocks. A job that fails on a storage fault (the
file locked by another process, the disk full, an I/O error) stays at the head of the queue
and is tried again with a capped backoff, so nothing accepted is lost and order is kept; the
fault is logged once when it starts and once when it ends, and counted. A job that fails for
any other reason is a bug: it is logged with its description and dropped, so it cannot block
the jobs behind it. (A corrupt file is a storage fault: its writes wait for an operator to
restore it, counted and logged, rather than being thrown away.)
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("gridpilot.writer")
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0
FINISH_RUNNING_S = 10.0  # at shutdown, for the write under way (SQLite's busy timeout: 5 s)
# Faults of the disk (locked, busy, full, I/O, corrupt): the write waits and is tried again.
# Faults of the code (a constraint, a bad statement or argument) would fail again: dropped.
BUGS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


def storage_fault(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.DatabaseError | OSError) and not isinstance(exc, BUGS)


@dataclass(frozen=True)
class _Job:
    run: Callable[[], object]
    what: str  # for the log: which write, of what
    sheddable: bool = False  # a periodic sample: past the bound, new ones are not queued


_STOP = _Job(lambda: None, "stop")


class Writer:
    def __init__(self, name: str, max_sheddable: int = 3600) -> None:
        self.name = name
        self.max_sheddable = max_sheddable  # samples held while the disk fails (1 h of 1/s)
        self.failures_total = 0  # tries that failed on a storage fault
        self.dropped_total = 0  # jobs that failed for a bug
        self.shed_total = 0  # samples not queued: the bound was reached while the disk failed
        self.lost_total = 0  # writes the disk still refused at shutdown
        self._sheddable = 0  # samples queued now
        self._count_lock = threading.Lock()  # memory only, held for an increment
        self.last_error: str | None = None
        self.failing = False  # a storage fault holds the queue now
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, name=f"writer:{name}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def put(self, run: Callable[[], object], what: str, sheddable: bool = False) -> None:
        """Queue a job; returns at once. A sheddable one (a periodic sample) is not queued,
        but counted, while `max_sheddable` of them already wait: memory stays bounded through
        a long disk failure, and everything else (events, alarms, audit) is kept."""
        if sheddable:
            with self._count_lock:
                if self._sheddable >= self.max_sheddable:
                    self.shed_total += 1
                    return
                self._sheddable += 1
        self._queue.put(_Job(run, what, sheddable))

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every job queued before this call has run (tools, tests, shutdown);
        False if that took longer than `timeout_s` (a storage fault holds them)."""
        done = threading.Event()
        self.put(done.set, "flush")
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Run what is queued (trying a failing job until `timeout_s`), then stop. What is
        still queued then is not run but counted and logged as lost, and this returns once the
        job running now has ended: after it, the thread touches nothing (the file may close)."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        self._stopping.set()
        self._thread.join(FINISH_RUNNING_S)
        if self._thread.is_alive():
            log.error("writer still busy at shutdown", extra={"writer": self.name})

    def _work(self) -> None:
        lost: list[str] = []
        while (job := self._queue.get()) is not _STOP:
            if self._stopping.is_set():
                lost.append(job.what)  # time is up: not started, so not half done
            else:
                self._run(job)
            if job.sheddable:
                with self._count_lock:
                    self._sheddable -= 1
        if lost:
            self.lost_total += len(lost)
            log.error(
                "writes lost at shutdown",
                extra={"writer": self.name, "count": len(lost), "first": lost[0]},
            )

    def _run(self, job: _Job) -> None:
        backoff = BACKOFF_INITIAL_S
        while True:
            try:
                job.run()
            except Exception as exc:
                if not storage_fault(exc):
                    self.dropped_total += 1
                    log.error(
                        "write dropped",
                        extra={"writer": self.name, "write": job.what, "error": repr(exc)},
                    )
                    return
                self.failures_total += 1  # the disk's fault: keep the job, try again
                self.last_error = f"{job.what}: {exc}"
                if not self.failing:
                    self.failing = True
                    log.error(
                        "storage failing; writes held and retried",
                        extra={"writer": self.name, "write": job.what, "error": str(exc)},
                    )
                if self._stopping.is_set():
                    self.lost_total += 1
                    log.error("write lost at shutdown", extra={"write": job.what})
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if self.failing:
                self.failing = False
                log.warning(
                    "storage recovered",
                    extra={"writer": self.name, "pending": self._queue.qsize()},
                )
            return
