"""The planner in the live loop, off the tick's path.

Each tick hands the planner what it saw (`Planner.observe`: a list append). Once every
`planner.every_s`, right after a tick (so the work lands in the gap before the next one), a
side task takes the loads seen since the last plan, the tick's pending notices and the core's
low-pass, and has the shared re-plan (`controller.dispatch.replan`, as replay does) run in the
planner's own process (`PlanWorker`): the loop never waits on it, and the plan's Python never
holds the interpreter lock a tick needs (on a worker thread it did, and made ticks late at a
20 ms period). The process keeps no state: each request carries what the last plan left, so a
process that dies, raises or hangs (no answer by the time its plan would go stale) is counted,
logged and replaced, and planning goes on from the last plan that came back.

The result is published as one immutable `Plan` that each tick reads (`Plan.at`): the
feed-forward for its time, 0 once the plan is stale (the planner stopped keeping up) or past
its end. Only auto mode uses it (`decide`), and it enters the core before the cap and the
ramp limiter, so no plan can break a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection

import numpy as np

from controller.config import DispatchConfig, PlannerSettings, SiteConfig
from controller.dispatch import core
from controller.dispatch.replan import Memory, Replanning, plan_settings, replan
from controller.dispatch.rhythm import RhythmSettings
from controller.notices import Notice, in_order
from controller.record import TickRecord

log = logging.getLogger("gridpilot.planning")
MAX_SEEN_S = 60.0  # loads kept for a planner that fell behind (the rhythm's window)
START_S = 60.0  # the planner's process has this long to start (imports), a busy machine too
STOP_WAIT_S = 2.0  # a process asked to stop and still there after this is killed
PLANNER_NICE = 10  # the planner's process is this much nicer than the controller (Unix)


@dataclass(frozen=True, eq=False)
class Plan:
    """A published plan: the feed-forward for each tick from `start_s`, `dt_s` apart."""

    start_s: float  # unix time of its first value: the tick after the newest it saw
    dt_s: float
    values_w: np.ndarray  # read-only
    until_s: float  # unix time after which it is stale and not used
    duration_s: float = 0.0  # from the request to the plan in hand, s (the trips included)
    work_s: float = 0.0  # of which the planner's process worked on it, s
    cpu_s: float = 0.0  # of which it had a CPU, s
    events: int = 0  # the changes it plans for, announced and learned

    def at(self, now_s: float) -> float:
        """The feed-forward for the tick at now_s, W; 0 once stale or past its end."""
        if now_s > self.until_s:
            return 0.0
        i = max(0, round((now_s - self.start_s) / self.dt_s))  # a tick a little early: the first
        return float(self.values_w[i]) if i < len(self.values_w) else 0.0


def plan_w_at(plan: Plan | None, now_s: float) -> float:
    """What the tick at now_s adds to its grid target: 0 without a plan."""
    return 0.0 if plan is None else plan.at(now_s)


@dataclass(frozen=True)
class Seen:
    """What the ticks since the last plan showed: taken on the event loop, in one go."""

    tick_s: float  # the newest tick's unix time
    loads_w: np.ndarray  # the site load of each tick since the last plan, oldest first
    pending: tuple[Notice, ...]  # the newest tick's pending notices
    lowpass_w: float  # the core's low-pass after the newest tick
    dispatch: DispatchConfig  # in force at the newest tick (its ramps may have changed)


@dataclass(frozen=True)
class Carried:
    """What one live plan leaves the next."""

    memory: Memory = field(default_factory=Memory)
    notices: tuple[Notice, ...] = ()  # pending, and over within keep_s (their plans fade)


def remembered(
    kept: tuple[Notice, ...], pending: tuple[Notice, ...], now_s: float, keep_s: float
) -> tuple[Notice, ...]:
    """The notices to plan from: those pending now, and those over (no longer pending, their
    end passed) within keep_s, so a change's plan fades as the filter catches up instead of
    vanishing when its notice stops being pending. A notice gone before its end was
    cancelled: its plan goes with it."""
    ids = {n.id for n in pending}
    over = tuple(n for n in kept if n.id not in ids and now_s - keep_s <= n.ends_s <= now_s)
    return in_order(pending + over)


def make_plan(
    carried: Carried,
    seen: Seen,
    dt_s: float,
    p: PlannerSettings,
    learn: RhythmSettings | None,
) -> tuple[Plan, Carried]:
    """One live re-plan, pure: the plan from the tick after the newest seen, and what the
    next re-plan carries on from."""
    s = Replanning(plan_settings(seen.dispatch, p), p.job_w, learn)
    notices = remembered(carried.notices, seen.pending, seen.tick_s, s.keep_s)
    now_s = seen.tick_s + dt_s
    ff, memory = replan(carried.memory, now_s, dt_s, notices, seen.loads_w, seen.lowpass_w, s)
    ff.flags.writeable = False  # shared with every tick and reader from here on
    until_s = seen.tick_s + p.stale_plans * p.every_s
    events = sum(1 for t in memory.plan if t.status != "dropped")
    return Plan(now_s, dt_s, ff, until_s, events=events), Carried(memory, notices)


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


async def _on_thread[T](worker: PlanWorker, call: Callable[[], T], timeout_s: float) -> T:
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


class Planner:
    """The live planner: fed by each tick, re-plans in its own process, publishes `plan`."""

    def __init__(self, site: SiteConfig) -> None:
        self.settings = site.planner
        self.dt_s = site.loop_period_s
        self.learn = RhythmSettings() if self.settings.learn_rhythm else None
        self.plan: Plan | None = None  # the newest: each tick reads it, without a lock
        self.plans_total = 0
        self.failures_total = 0  # plans not made: the process raised, died or hung
        self.worker: PlanWorker | None = None  # started with the first plan, replaced on faults
        self._carried = Carried()
        self._loads: deque[float] = deque(maxlen=max(1, math.ceil(MAX_SEEN_S / self.dt_s)))
        self._newest: tuple[float, tuple[Notice, ...], float, DispatchConfig] | None = None
        self._ticked = asyncio.Event()

    def observe(self, rec: TickRecord, core_state: np.ndarray) -> None:
        """After each tick, on its path: what it saw (a degraded tick saw no load)."""
        load = rec.site_load_w
        if load is None:
            return
        self._loads.append(load)
        lowpass = float(core_state[core.S_LOWPASS]) if core_state[core.S_INIT] else load
        self._newest = (rec.wall_time, rec.in_force.notices, lowpass, rec.in_force.dispatch)
        self._ticked.set()

    def take(self) -> Seen | None:
        """What the ticks since the last plan saw (None: no tick with a load yet)."""
        if self._newest is None:
            return None
        tick_s, pending, lowpass, dispatch = self._newest
        loads = np.fromiter(self._loads, dtype=float, count=len(self._loads))
        self._loads.clear()
        return Seen(tick_s, loads, pending, lowpass, dispatch)

    async def replan(self, seen: Seen) -> Plan:
        """One plan from what was seen, made in the planner's process (started if need be)
        and timed; PlanFailed if not made (the process is then gone: the next starts anew)."""
        if self.worker is None:
            self.worker = worker = await asyncio.to_thread(PlanWorker)
            await _on_thread(worker, worker.wait_ready, START_S)
        worker = self.worker
        request = Request(self._carried, seen, self.dt_s, self.settings, self.learn)
        hang_s = self.settings.stale_plans * self.settings.every_s  # its plan stale by then
        started = time.perf_counter()
        plan, self._carried = await _on_thread(worker, lambda: worker.ask(request), hang_s)
        return replace(plan, duration_s=time.perf_counter() - started)

    async def run(self, stop: asyncio.Event) -> None:
        """Re-plan every `every_s`, right after a tick, until `stop` is set."""
        every = self.settings.every_s
        next_at = time.monotonic() + every
        try:
            while not await _wait(stop, self._ticked, next_at):
                next_at = max(next_at + every, time.monotonic())  # late: no burst of plans after
                seen = self.take()
                if seen is None:
                    continue
                try:
                    self.plan = await self.replan(seen)
                    self.plans_total += 1
                except Exception as e:  # planning goes on; the last plan goes stale meanwhile
                    self.failures_total += 1
                    log.error(
                        "plan failed; the planner's process starts again",
                        extra={"error": str(e), "failures_total": self.failures_total},
                    )
                    await self._stop_worker()
        finally:
            await asyncio.shield(self._stop_worker())

    async def _stop_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            await asyncio.to_thread(worker.close)


async def _wait(stop: asyncio.Event, ticked: asyncio.Event, at: float) -> bool:
    """Until monotonic `at`, then until the next tick; True once `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), max(0.0, at - time.monotonic()))
        return True
    except TimeoutError:
        pass
    ticked.clear()
    waiting = asyncio.ensure_future(ticked.wait())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    stopping.cancel()
    return stop.is_set()
