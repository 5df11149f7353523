"""The planner's own process: re-plans run there, so their Python never holds the interpreter
lock the loop's ticks need (on a worker thread it did, and made ticks late at a 20 ms period).

The process keeps no state: each request carries what the last plan left (`Carried`) and gets
the plan and the next `Carried` back, so a process that raises, dies or hangs is replaced and
the next plan goes on from the last one that came back. Its blocking calls run on a thread (a
pipe's read lets the interpreter lock go), never on the event loop; one that gets no answer in
time kills the process, so the call ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection

from controller.config import PlannerSettings
from controller.dispatch.rhythm import RhythmSettings
from controller.plans import Carried, Plan, Seen, make_plan

log = logging.getLogger("gridpilot.planning")
STOP_WAIT_S = 2.0  # a process asked to stop and still there after this is killed
PLANNER_NICE = 10  # the planner's process is this much nicer than the controller (Unix)


@dataclass(frozen=True)
class Request:
    """One re-plan asked of the planner's process: everything it needs."""

    carried: Carried
    seen: Seen
    dt_s: float
    settings: PlannerSettings
    learn: RhythmSettings | None


class PlanFailed(RuntimeError):
    """The plan was not made: the planner's process raised, died or hung."""


def answer(request: Request) -> tuple[Plan, Carried]:
    """One plan, with the time it took (the trips to and from it are the asker's to take)."""
    started, cpu = time.perf_counter(), time.thread_time()
    r = request
    plan, carried = make_plan(r.carried, r.seen, r.dt_s, r.settings, r.learn)
    took = {"work_s": time.perf_counter() - started, "cpu_s": time.thread_time() - cpu}
    return replace(plan, **took), carried


def _serve(conn: Connection) -> None:
    """The planner process's whole life: ready, then an answer to each request until the
    pipe closes."""
    conn.send(("ready", None))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the controller closed its end, or is gone
            return
        try:
            conn.send(("ok", answer(request)))
        except Exception as e:  # the controller counts and logs it; the process goes on
            conn.send(("error", f"{type(e).__name__}: {e}"))


class PlanWorker:
    """One planner process and its pipe. Its blocking calls run on a thread (a pipe's read
    lets the interpreter lock go), never on the event loop."""

    def __init__(self) -> None:
        # spawn, not fork: a fork would copy the controller's threads' locks as they stand
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve, args=(child,), name="gridpilot-planner", daemon=True
        )
        self.process.start()
        child.close()  # only the process holds its end: its death reads as the pipe's end
        self.pid = self.process.pid
        # Its start-up (imports) and its plans yield a busy machine's CPU to the ticks.
        nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + PLANNER_NICE)
        os.setpriority(os.PRIO_PROCESS, self.pid, nice)
        self.exitcode: int | None = None  # once closed: how it ended (-9: killed)

    def _receive(self) -> object:
        try:
            status, body = self._conn.recv()
        except (EOFError, OSError) as e:
            raise PlanFailed(
                f"the planner's process (pid {self.pid}) is gone, exit code {self.process.exitcode}"
            ) from e
        if status == "error":
            raise PlanFailed(f"the plan raised in the planner's process (pid {self.pid}): {body}")
        return body

    def wait_ready(self) -> None:
        self._receive()

    def ask(self, request: Request) -> tuple[Plan, Carried]:
        try:
            self._conn.send(request)
        except OSError as e:
            raise PlanFailed(f"the planner's process (pid {self.pid}) is gone") from e
        plan, carried = self._receive()  # type: ignore[misc]
        plan.values_w.flags.writeable = False  # as made: a pickle's trip loses the flag
        return plan, carried

    def kill(self) -> None:
        """End a hung process now: a read waiting on it ends (the pipe's end)."""
        with contextlib.suppress(ValueError):  # already closed
            self.process.kill()

    def close(self) -> None:
        """Stop the process: its pipe closed, it ends; killed if it does not."""
        self._conn.close()
        self.process.join(STOP_WAIT_S)
        if self.process.is_alive():
            log.warning("planner process did not stop; killed", extra={"pid": self.pid})
            self.process.kill()
            self.process.join(STOP_WAIT_S)
        self.exitcode = self.process.exitcode
        self.process.close()


async def on_thread[T](worker: PlanWorker, call: Callable[[], T], timeout_s: float) -> T:
    """A worker's blocking call on a thread; the process killed if it has not answered in
    timeout_s (a hang), so the call ends with PlanFailed."""
    asking = asyncio.ensure_future(asyncio.to_thread(call))
    asking.add_done_callback(_retrieved)  # a call given up on ends with an error no one reads
    try:
        return await asyncio.wait_for(asyncio.shield(asking), timeout_s)
    except TimeoutError:
        worker.kill()
        with contextlib.suppress(PlanFailed):
            await asking
        raise PlanFailed(
            f"no answer from the planner's process (pid {worker.pid}) in {timeout_s:g} s: killed"
        ) from None
    except asyncio.CancelledError:  # the loop stops: the thread must not outlive the process
        worker.kill()
        raise


def _retrieved(done: asyncio.Future[object]) -> None:
    if not done.cancelled():
        done.exception()
