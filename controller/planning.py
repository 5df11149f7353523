"""The planner in the live loop, off the tick's path.

Each tick hands the planner what it saw (`Planner.observe`: a list append). Once every
`planner.every_s`, right after a tick (so the work lands in the gap before the next one), a
side task takes the loads seen since the last plan, the tick's pending notices and the core's
low-pass, and runs the shared re-plan (`controller.dispatch.replan`, as replay does) on a
worker thread; the loop never waits on it. The result is published as one immutable `Plan`
that each tick reads (`Plan.at`): the feed-forward for its time, 0 once the plan is stale (the
planner stopped keeping up) or past its end. Only auto mode uses it (`decide`), and it enters
the core before the cap and the ramp limiter, so no plan can break a limit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from controller.config import DispatchConfig, PlannerSettings, SiteConfig
from controller.dispatch import core
from controller.dispatch.replan import Memory, Replanning, plan_settings, replan
from controller.dispatch.rhythm import RhythmSettings
from controller.notices import Notice, in_order
from controller.record import TickRecord

log = logging.getLogger("gridpilot.planning")
MAX_SEEN_S = 60.0  # loads kept for a planner that fell behind (the rhythm's window)


@dataclass(frozen=True, eq=False)
class Plan:
    """A published plan: the feed-forward for each tick from `start_s`, `dt_s` apart."""

    start_s: float  # unix time of its first value: the tick after the newest it saw
    dt_s: float
    values_w: np.ndarray  # read-only
    until_s: float  # unix time after which it is stale and not used
    duration_s: float = 0.0  # the planner's time for it, s (waits for the GIL included)
    cpu_s: float = 0.0  # of which its worker thread ran, s
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


class Planner:
    """The live planner: fed by each tick, re-plans on a worker thread, publishes `plan`."""

    def __init__(self, site: SiteConfig) -> None:
        self.settings = site.planner
        self.dt_s = site.loop_period_s
        self.learn = RhythmSettings() if self.settings.learn_rhythm else None
        self.plan: Plan | None = None  # the newest: each tick reads it, without a lock
        self.plans_total = 0
        self.failures_total = 0
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

    def replan_now(self, seen: Seen) -> Plan:
        """One plan from what was seen, timed (on the worker thread: nothing else runs it)."""
        started, cpu = time.perf_counter(), time.thread_time()
        plan, self._carried = make_plan(self._carried, seen, self.dt_s, self.settings, self.learn)
        return replace(
            plan, duration_s=time.perf_counter() - started, cpu_s=time.thread_time() - cpu
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Re-plan every `every_s`, right after a tick, until `stop` is set."""
        every = self.settings.every_s
        next_at = time.monotonic() + every
        while not await _wait(stop, self._ticked, next_at):
            next_at = max(next_at + every, time.monotonic())  # late: no burst of plans after
            seen = self.take()
            if seen is None:
                continue
            try:
                self.plan = await asyncio.to_thread(self.replan_now, seen)
                self.plans_total += 1
            except Exception:  # a bad plan must not end planning: the last one goes stale
                self.failures_total += 1
                log.exception("plan failed")


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
