"""The planner's own process: re-plans run there, so their Python never holds the interpreter
lock the loop's ticks need (on a worker thread it did, and made ticks late at a 20 ms period).

The process (`python -m controller.plan_worker FD`, its end of a socket pair) keeps no state:
each request carries what the last plan left (`Carried`) and gets the plan and the next
`Carried` back. A plan that raises there is an error and the process goes on; one that dies
or hangs is replaced by the planner, and the next plan goes on from the last one that came
back. The controller's calls block, so they run on a thread (a socket's read lets the
interpreter lock go), never on the event loop; one that gets no answer in time, or whose
controller stops, kills the process, so the read ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Literal

from controller.config import PlannerSettings
from controller.dispatch.rhythm import RhythmSettings
from controller.plans import Carried, Plan, Seen, make_plan

log = logging.getLogger("gridpilot.planning")
STOP_WAIT_S = 5.0  # a process asked to stop and still there after this is killed
PLANNER_NICE = 10  # the planner's process is this much nicer than the controller (Unix)
CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds controller/


@dataclass(frozen=True)
class Request:
    """One re-plan asked of the planner's process: everything it needs."""

    carried: Carried
    seen: Seen
    dt_s: float
    settings: PlannerSettings
    learn: RhythmSettings | None


Failure = Literal["raised", "died", "hung"]


class PlanFailed(RuntimeError):
    """The plan was not made: it raised in the planner's process (which goes on), or the
    process died or hung (it is gone: killed if need be)."""

    def __init__(self, message: str, kind: Failure, pid: int, exit_code: int | None) -> None:
        super().__init__(message)
        self.kind, self.pid, self.exit_code = kind, pid, exit_code

    @property
    def gone(self) -> bool:
        return self.kind != "raised"


class PlanningStopped(Exception):
    """The controller stopped while a plan was being made: not a failure."""


def answer(request: Request) -> tuple[Plan, Carried]:
    """One plan, with the time it took (the trips to and from it are the asker's to take)."""
    started, cpu = time.perf_counter(), time.thread_time()
    plan, carried = make_plan(
        request.carried, request.seen, request.dt_s, request.settings, request.learn
    )
    took = {"work_s": time.perf_counter() - started, "cpu_s": time.thread_time() - cpu}
    return replace(plan, **took), carried


def serve(conn: Connection) -> None:
    """The process's whole life: ready, then an answer to each request until the controller
    closes its end (or is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the controller, which stops us
    conn.send(("ready", None))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", answer(request)))
        except Exception:  # the controller counts and logs it; this process goes on
            conn.send(("error", traceback.format_exc()))


class PlanWorker:
    """One planner process and its end of the socket pair. Its calls block: they run on the
    worker's own thread (`executor`), so a busy shared pool cannot make a plan look hung."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        # The code this controller runs, whatever the working directory (-P: not it first).
        path = os.pathsep.join(p for p in (CODE_ROOT, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", "controller.plan_worker", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env=env,
                process_group=0,  # a terminal's Ctrl-C reaches the controller, which stops it
            )
        self._conn = Connection(ours.detach())
        self.pid = self.process.pid
        # Its start-up (imports) and its plans yield a busy machine's CPU to the ticks.
        with contextlib.suppress(OSError):  # best effort: it plans all the same
            nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + PLANNER_NICE)
            os.setpriority(os.PRIO_PROCESS, self.pid, nice)
        self._busy = threading.Lock()  # held while a call waits on the process
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="planner")

    @property
    def exit_code(self) -> int | None:
        """None while it runs; -9 once killed."""
        return self.process.poll()

    def failed(self, what: str, kind: Failure) -> PlanFailed:
        return PlanFailed(
            f"{what} (planner process, pid {self.pid}, exit code {self.exit_code})",
            kind,
            self.pid,
            self.exit_code,
        )

    def _call(self, request: Request | None) -> object:
        with self._busy:
            try:
                if request is not None:
                    self._conn.send(request)
                status, body = self._conn.recv()
            except (EOFError, OSError) as e:
                with contextlib.suppress(subprocess.TimeoutExpired):  # its exit code, if it comes
                    self.process.wait(1.0)
                raise self.failed("the process is gone", "died") from e
        if status == "error":
            raise self.failed(f"the plan raised: {body}", "raised")
        return body

    def wait_ready(self) -> None:
        self._call(None)

    def ask(self, request: Request) -> tuple[Plan, Carried]:
        plan, carried = self._call(request)  # type: ignore[misc]
        return plan, carried

    def kill(self) -> None:
        """End a hung process now: a call waiting on it ends (its end of the pair closes)."""
        if self.process.poll() is None:
            self.process.kill()

    def close(self) -> None:
        """Stop the process (closing our end ends it) once no call waits on it; killed if
        it does not stop, or if a call still waits (the controller is stopping)."""
        if not self._busy.acquire(blocking=False):
            self.kill()
            self._busy.acquire()  # the waiting call ends with the process
        try:
            self._conn.close()
            try:
                self.process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                log.warning("planner process did not stop; killed", extra={"pid": self.pid})
                self.kill()
                self.process.wait(STOP_WAIT_S)
        finally:
            self._busy.release()
            self.executor.shutdown(wait=False)


async def on_thread[T](
    worker: PlanWorker, call: Callable[[], T], timeout_s: float, stop: asyncio.Event
) -> T:
    """A worker's blocking call on a thread. No answer in timeout_s (a hang): the process is
    killed and PlanFailed raised; the controller stopping meanwhile: PlanningStopped."""
    asking = asyncio.get_running_loop().run_in_executor(worker.executor, call)
    asking.add_done_callback(_retrieved)  # a call given up on ends with an error no one reads
    stopping = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait(
            {asking, stopping}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stopping.cancel()
    if asking in done:
        return asking.result()
    worker.kill()
    await asyncio.wait({asking})  # it ends with the process
    if stop.is_set():
        raise PlanningStopped
    raise worker.failed(f"no answer in {timeout_s:g} s: killed", "hung")


def _retrieved(done: asyncio.Future[object]) -> None:
    if not done.cancelled():
        done.exception()


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
    os._exit(0)  # nothing to flush: skip the interpreter's teardown, so a stop is prompt
