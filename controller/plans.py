"""A live plan, pure: what the ticks since the last plan saw (`Seen`), what one plan leaves
the next (`Carried`), one re-plan from them (`make_plan`, the shared re-plan replay runs), and
the immutable `Plan` each tick reads its feed-forward from (`Plan.at`: 0 once stale or past its
end). The live planner (`controller.planning`) has `make_plan` run in its own process
(`controller.plan_worker`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from controller.config import DispatchConfig, PlannerSettings
from controller.dispatch.replan import Memory, Replanning, plan_settings, replan
from controller.dispatch.rhythm import RhythmSettings
from controller.notices import Notice, in_order


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

    def __setstate__(self, state: dict[str, object]) -> None:
        # Read-only as made: a pickle's trip (from the planner's process) loses the flag.
        self.__dict__.update(state)
        self.values_w.flags.writeable = False

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
