"""The planner in the live loop, off the tick's path.

Each tick hands the planner what it saw (`Planner.observe`: a list append). Once every
`planner.every_s`, right after a tick (so the work lands in the gap before the next one), a
side task takes the loads seen since the last plan, the tick's pending notices and the core's
low-pass, and has the shared re-plan (`controller.dispatch.replan`, as replay does) run in the
planner's own process (`PlanWorker`): the loop never waits on it, and the plan's Python never
holds the interpreter lock a tick needs (on a worker thread it did, and made ticks late at a
20 ms period). The process keeps no state: each request carries what the last plan left. A
plan that raises there, or a process that dies or hangs (no answer by the later of the plan
going stale and `hang_s`, 5 s: killed), is counted and logged, and the loads it saw go to the
next plan; a process that is gone is replaced, at once the first time and then after a pause
that doubles (to 30 s) while they keep going; planning goes on from the last plan that came
back.

The result is published as one immutable `Plan` that each tick reads (`Plan.at`): the
feed-forward for its time, 0 once the plan is stale (the planner stopped keeping up) or past
its end. Only auto mode uses it (`decide`), and it enters the core before the cap and the
ramp limiter, so no plan can break a limit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import replace

import numpy as np

from controller.config import DispatchConfig, SiteConfig
from controller.dispatch import core
from controller.dispatch.rhythm import RhythmSettings
from controller.notices import Notice
from controller.plan_worker import PlanFailed, PlanningStopped, PlanWorker, Request, on_thread
from controller.plans import Carried, Plan, Seen
from controller.record import TickRecord

log = logging.getLogger("gridpilot.planning")
MAX_SEEN_S = 60.0  # loads kept for a planner that fell behind (the rhythm's window)
START_S = 60.0  # the planner's process has this long to start (imports), a busy machine too
MAX_BACKOFF_S = 30.0  # a process that keeps dying is started again at most this far apart


class Planner:
    """The live planner: fed by each tick, re-plans in its own process, publishes `plan`."""

    def __init__(self, site: SiteConfig) -> None:
        self.settings = site.planner
        self.dt_s = site.loop_period_s
        self.learn = RhythmSettings() if self.settings.learn_rhythm else None
        self.plan: Plan | None = None  # the newest: each tick reads it, without a lock
        self.plans_total = 0
        self.failures_total = 0  # plans not made: they raised, or the process died or hung
        self.worker: PlanWorker | None = None  # started with the first plan, replaced when gone
        self._carried = Carried()
        self._keep = max(1, math.ceil(MAX_SEEN_S / self.dt_s))
        self._loads: deque[float] = deque(maxlen=self._keep)
        self._unplanned = np.zeros(0)  # loads a plan that was not made saw: the next sees them
        self._newest: tuple[float, tuple[Notice, ...], float, DispatchConfig] | None = None
        self._ticked = asyncio.Event()
        self._lost = 0  # processes lost in a row (died, hung, or did not start)
        self._start_after = 0.0  # monotonic: no new process before (backing off)

    def observe(self, rec: TickRecord, core_state: np.ndarray) -> None:
        """After each tick, on its path: what it saw (a degraded tick saw no load)."""
        load = rec.site_load_w
        if load is None:
            return
        self._loads.append(load)
        lowpass = float(core_state[core.S_LOWPASS]) if core_state[core.S_INIT] else load
        # Its scheduled time, not when it ran: the rhythm's clock counts ticks, not lateness.
        tick_s = rec.wall_time - max(0.0, rec.lateness_s)
        self._newest = (tick_s, rec.in_force.notices, lowpass, rec.in_force.dispatch)
        self._ticked.set()

    def take(self) -> Seen | None:
        """What the ticks since the last plan made saw (None: no tick with a load yet)."""
        if self._newest is None:
            return None
        tick_s, pending, lowpass, dispatch = self._newest
        seen = np.fromiter(self._loads, dtype=float, count=len(self._loads))
        self._loads.clear()
        loads = np.concatenate((self._unplanned, seen))[-self._keep :]
        self._unplanned = np.zeros(0)
        return Seen(tick_s, loads, pending, lowpass, dispatch)

    async def replan(self, seen: Seen, stop: asyncio.Event) -> Plan:
        """One plan from what was seen, made in the planner's process (started if need be)
        and timed. PlanFailed if not made; PlanningStopped if the controller stopped."""
        if self.worker is None:
            try:
                self.worker = await asyncio.to_thread(PlanWorker)
            except OSError as e:  # no process to be had (out of memory, of processes)
                raise PlanFailed(f"the planner process did not start: {e}", "died", 0, None) from e
            await on_thread(self.worker, self.worker.wait_ready, START_S, stop)
        worker = self.worker
        request = Request(self._carried, seen, self.dt_s, self.settings, self.learn)
        hang_s = max(self.settings.hang_s, self.settings.stale_plans * self.settings.every_s)
        started = time.perf_counter()
        plan, self._carried = await on_thread(worker, lambda: worker.ask(request), hang_s, stop)
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
                if self.worker is None and time.monotonic() < self._start_after:
                    self._unplanned = seen.loads_w  # backing off: no plan, nothing lost
                    continue
                try:
                    self.plan = await self.replan(seen, stop)
                except PlanningStopped:
                    break
                except PlanFailed as e:  # planning goes on; the last plan goes stale meanwhile
                    await self._failed(e, seen)
                    continue
                except Exception as e:  # a bug here or there: its process is not trusted again
                    pid = self.worker.pid if self.worker is not None else 0
                    await self._failed(PlanFailed(f"a bug: {e!r}", "died", pid, None), seen, e)
                    continue
                self.plans_total += 1
                self._lost = 0
        finally:
            await asyncio.shield(self._stop_worker())

    async def _failed(self, e: PlanFailed, seen: Seen, bug: Exception | None = None) -> None:
        """Counted and logged (a bug with its traceback); the loads it saw go to the next
        plan; a process that is gone is started again, after a pause that doubles while they
        keep going."""
        self.failures_total += 1
        self._unplanned = seen.loads_w
        backoff_s = 0.0
        if e.gone:
            await self._stop_worker()
            self._lost += 1
            backoff_s = min(MAX_BACKOFF_S, 2.0 ** min(self._lost - 1, 8) - 1.0)  # 0, 1, 3 … s
            self._start_after = time.monotonic() + backoff_s
        log.error(
            "plan failed",
            extra={
                "kind": e.kind,
                "pid": e.pid,
                "exit_code": e.exit_code,
                "error": str(e),
                "failures_total": self.failures_total,
                "new_process_in_s": backoff_s if e.gone else None,
            },
            exc_info=bug,
        )

    async def _stop_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is None:
            return
        try:
            await asyncio.to_thread(worker.close)
        except Exception:  # it is killed and forgotten either way: planning must go on
            log.exception("planner process did not close", extra={"pid": worker.pid})


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
