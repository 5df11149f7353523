"""The planner: what the workload announced for the coming seconds, turned into a feed-forward
the dispatch core adds to its grid target. Pure: numbers in, numbers out, no clock, no I/O.
Replay calls it once a second; the live loop can call it off the tick's path and hand the
core one value per tick (`core.I_PLAN`, `dispatch(..., plan_w=)`).

One shape per announced change of the site's mean draw, added up:
- a lasting step of A W at T (a job starts or stops): the grid crosses it on a ramp at the
  ramp limit, `lead_ratio` of it before T, so the battery takes before a rise about what it
  gives after it (at half, a quarter of the energy of carrying the whole step while the grid
  ramps);
- a pause of depth A for D s (a checkpoint): the grid ramps down to a plateau h by T, holds
  it through the pause and ramps back; h²/R + h·D = A·D makes what the battery gives around
  the pause equal to what it takes in it, the smallest swing for a pause on its own;
- a pause of a train, every I s (training checkpoints every K steps): the grid dips in a V
  at the ramp limit, lowest in the pause's middle and as wide as the interval, so the V's
  of a train join into the triangle wave at the ramp limit that the perfect-foresight bound
  drives on such a load. Its depth, R·I/2 at full swing, is `train_swing_ratio` of that:
  the full triangle's corners put the grid's own swing into the band it must keep out of.
The core's low-pass sees each change once it happens: the feed-forward is the plan minus that
foreseen response, so it fades as the filter catches up. The core keeps every guarantee (the
feed-forward enters before its cap and ramp limiter). No events: zeros, today's dispatch.

A change that does not come when announced slides with the clock until the load has crossed
half of it, and is dropped `give_up_s` after T; the feed-forward is then 0 again and the ramp
limiter takes the grid back at its rate. While it slides, a pause's plan holds where it stood
at T; a lasting step's ramp goes on `late_ramp_s` past T first (a job's GPUs often draw a few
seconds after its start is said), then holds.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from controller.notices import Notice


@dataclass(frozen=True)
class Event:
    """An announced change of the site's mean draw."""

    at_s: float
    delta_w: float  # the mean draw's change, W (negative: it falls)
    duration_s: float = math.inf  # a pause: the draw comes back after this
    every_s: float = math.inf  # a pause of a train: the interval between its starts


@dataclass(frozen=True)
class PlanSettings:
    ramp_up_w_per_s: float
    ramp_down_w_per_s: float
    lowpass_tau_s: float  # the core's: its response to a change is what the plan adds to
    # The site's `planner` section's (controller.config.PlannerSettings, where the defaults
    # and their reasons are): `controller.dispatch.replan.plan_settings` makes these.
    lead_ratio: float  # of a lasting step, crossed before it
    late_ramp_s: float  # a late lasting step's ramp goes on this long past its time
    give_up_s: float  # an announced change not seen this long after its time is dropped
    horizon_s: float
    train_swing_ratio: float  # of a train's full triangle (depth R·I/2)


Status = Literal["waiting", "seen", "dropped"]


@dataclass(frozen=True)
class Tracked:
    event: Event
    at_s: float  # when it is planned to happen: its time, or later while it slips
    level_w: float  # the load's mean just before it: the half-way mark is measured from it
    status: Status


PlanState = tuple[Tracked, ...]


def _crossed(t: Tracked, now_s: float, dt_s: float, recent_load_w: np.ndarray) -> bool:
    """Whether the load's mean since the change's planned time has moved half of it (a mean:
    a start-up's brief bursts are not yet the job, a step's short dips not yet a pause)."""
    times = now_s - dt_s * np.arange(recent_load_w.size, 0, -1)
    since = recent_load_w[times >= t.at_s - dt_s / 2]
    if since.size == 0:
        return False
    moved = (float(np.mean(since)) - t.level_w) * math.copysign(1.0, t.event.delta_w)
    return moved >= abs(t.event.delta_w) / 2.0


def track(
    now_s: float,
    dt_s: float,
    events: Iterable[Event],
    state: PlanState,
    recent_load_w: np.ndarray,
    lowpass_w: float,
    give_up_s: float,
) -> PlanState:
    """Each event's planned time and status at now_s, from the last plan's and the loads seen
    since (recent_load_w: the ticks just before now_s, the last at now_s − dt_s). An event is
    the one planned before when its time, change and duration are: it keeps its plan (a
    pause's train interval is the one it was planned with, whatever is still in view)."""
    before = {_identity(t.event): t for t in state}
    out = []
    for e in events:
        t = before.get(_identity(e)) or Tracked(e, e.at_s, lowpass_w, "waiting")
        e = t.event
        if t.status == "waiting":
            if now_s < e.at_s:  # the level it moves from: the load's latest mean
                level = float(np.mean(recent_load_w)) if recent_load_w.size else lowpass_w
                t = replace(t, level_w=level)
            elif _crossed(t, now_s, dt_s, recent_load_w):
                t = replace(t, status="seen")
            elif now_s - e.at_s > give_up_s:
                t = replace(t, status="dropped")
            else:
                t = replace(t, at_s=now_s)
        out.append(t)
    return tuple(out)


def _identity(e: Event) -> tuple[float, float, float]:
    return (e.at_s, e.delta_w, e.duration_s)


def _lowpass_response(s: np.ndarray, duration_s: float, tau_s: float) -> np.ndarray:
    """The core's low-pass after a unit change at s = 0 that lasts duration_s."""
    on = np.clip(s, 0.0, duration_s)
    rise = np.where(s >= 0.0, -np.expm1(-on / tau_s), 0.0)
    after = np.maximum(s - duration_s, 0.0) if math.isfinite(duration_s) else 0.0
    return rise * np.exp(-after / tau_s)


def pause_depth_w(depth_w: float, duration_s: float, ramp_w_per_s: float) -> float:
    """The plateau h for a pause (h²/R + h·D = A·D), never deeper than the pause itself."""
    d, r = duration_s, ramp_w_per_s
    h = (-d + math.sqrt(d * d + 4.0 * depth_w * d / r)) * r / 2.0
    return min(h, depth_w)


def shape_w(s: np.ndarray, e: Event, p: PlanSettings, late_s: float = 0.0) -> np.ndarray:
    """One event's feed-forward at s seconds from its planned time, late_s after its own."""
    a = abs(e.delta_w)
    if a == 0.0:
        return np.zeros_like(s)
    sign = math.copysign(1.0, e.delta_w)
    if math.isfinite(e.duration_s):
        r = min(p.ramp_up_w_per_s, p.ramp_down_w_per_s)
        if math.isfinite(e.every_s):
            h = min(p.train_swing_ratio * r * e.every_s / 2.0, a)
            plan = np.clip(h - r * np.abs(s - e.duration_s / 2.0), 0.0, h)
            # The V takes the place of as much of the filter's dip as it holds energy (h²/R
            # of the A·D): the grid's energy over the pause stays what plain smoothing gives.
            a = min(a, h * h / r / e.duration_s)
        else:
            h = pause_depth_w(a, e.duration_s, r)
            plan = np.clip(np.minimum(h + r * s, h - r * (s - e.duration_s)), 0.0, h)
    else:
        r = p.ramp_up_w_per_s if e.delta_w > 0 else p.ramp_down_w_per_s
        ramped_s = s + min(late_s, p.late_ramp_s)  # the ramp's way past T, from the plan's time
        plan = a * np.clip(p.lead_ratio + ramped_s * r / a, 0.0, 1.0)
    return sign * (plan - a * _lowpass_response(s, e.duration_s, p.lowpass_tau_s))


def feed_forward_w(now_s: float, dt_s: float, state: PlanState, p: PlanSettings) -> np.ndarray:
    """The feed-forward for each tick from now_s over the horizon, W."""
    t = now_s + dt_s * np.arange(max(1, round(p.horizon_s / dt_s)))
    out = np.zeros_like(t)
    for tr in state:
        if tr.status != "dropped":
            out += shape_w(t - tr.at_s, tr.event, p, tr.at_s - tr.event.at_s)
    return out


def plan(
    now_s: float,
    dt_s: float,
    events: Iterable[Event],
    state: PlanState,
    recent_load_w: np.ndarray,
    lowpass_w: float,
    p: PlanSettings,
) -> tuple[np.ndarray, PlanState]:
    """One re-plan: (the feed-forward per tick from now_s, W; the state for the next)."""
    state = track(now_s, dt_s, events, state, recent_load_w, lowpass_w, p.give_up_s)
    return feed_forward_w(now_s, dt_s, state, p), state


TRAIN_MAX_S = 60.0  # pauses further apart than this are each on their own, not a train


def train_intervals(pauses: list[tuple[float, float]]) -> list[float]:
    """For one job's pauses (start, duration; s) in time order: each one's interval in its
    train, the gap to the pause before it; inf for the first of a train, a pause on its own,
    or one that starts before the one before has ended. Only the one before: a pause's plan
    must not change once made, and the next one is announced later."""
    out, before = [], -math.inf
    for at, duration in pauses:
        gap = at - before
        out.append(gap if duration < gap <= TRAIN_MAX_S else math.inf)
        before = at
    return out


@dataclass(frozen=True)
class Draw:
    """What a notice says its job draws from its time on."""

    job_id: str
    at_s: float
    power_w: float
    notice_id: int  # of two at the same time, the one posted later holds
    ends_s: float  # the notice's end: pending (and in the planner's view) until a while after

    @property
    def order(self) -> tuple[float, int]:
        return (self.at_s, self.notice_id)


def draws_of(notices: Iterable[Notice], job_w: float) -> tuple[Draw, ...]:
    """What each notice of a job says the job draws from its time on: a start its power (or
    job_w), a level change its power, a stop nothing. Notices of no job say nothing of one."""
    out: list[Draw] = []
    for n in notices:
        if n.job_id is None:
            continue
        if n.kind == "job_start":
            power = job_w if n.power_w is None else n.power_w
        elif n.kind == "level_change" and n.power_w is not None:
            power = n.power_w
        elif n.kind == "job_stop":
            power = 0.0
        else:
            continue
        out.append(Draw(n.job_id, n.at_s, power, n.id, n.ends_s))
    return tuple(out)


class JobDraws:
    """Each job's draws in time order, to ask what a job drew just before a time."""

    def __init__(self, draws: Iterable[Draw]) -> None:
        by_job: dict[str, dict[tuple[float, int], Draw]] = {}
        for d in draws:
            by_job.setdefault(d.job_id, {})[d.order] = d
        self._draws = {
            job: sorted(ds.values(), key=lambda d: d.order) for job, ds in by_job.items()
        }
        self._times = {job: [d.at_s for d in ds] for job, ds in self._draws.items()}

    def jobs(self) -> Iterable[tuple[str, list[Draw]]]:
        """Each job and its draws, in time order (of two at one time, the later posted last)."""
        return self._draws.items()

    def count_before(self, job_id: str, at_s: float) -> int:
        """How many of the job's draws are before at_s."""
        return bisect.bisect_left(self._times.get(job_id, []), at_s)

    def before(self, job_id: str | None, at_s: float) -> float | None:
        """What the job drew just before at_s (None: no job, or nothing known before)."""
        if job_id is None:
            return None
        k = self.count_before(job_id, at_s)
        return self._draws[job_id][k - 1].power_w if k else None


def events_of(
    notices: Iterable[Notice], job_w: float, known: tuple[Draw, ...] = ()
) -> tuple[Event, ...]:
    """Notices as changes of the mean draw. job_w: what a job adds when it runs (W), for the
    notices that do not say (`power_w`). What a job (a job_id) draws is what its latest start
    or level change said (in view, or `known` from notices gone), else job_w: a pause takes
    that away, a stop that says no power takes it all. A level change of a job (its new draw,
    absolute) is the change from what the job drew before it; one with nothing known before
    it, or of no job, is left to the filter. A job's pauses (those of no job together)
    announced one after another within TRAIN_MAX_S are a train (`train_intervals`). A
    pause_end that closes a pause_start with a duration is part of that pause."""
    notices = sorted(notices, key=lambda n: n.at_s)
    draws = JobDraws(known + draws_of(notices, job_w))
    ends = {n.at_s + n.duration_s for n in notices if n.kind == "pause_start" and n.duration_s}
    every = _trains(notices)
    out = []
    for n in notices:
        before = draws.before(n.job_id, n.at_s)
        running = job_w if before is None else before
        if n.kind == "job_start":
            out.append(Event(n.at_s, job_w if n.power_w is None else n.power_w))
        elif n.kind == "job_stop":
            out.append(Event(n.at_s, -(running if n.power_w is None else n.power_w)))
        elif n.kind == "pause_start":
            depth = running - (n.power_w or 0.0)
            out.append(Event(n.at_s, -depth, n.duration_s or math.inf, every.get(n, math.inf)))
        elif n.kind == "pause_end" and not any(abs(n.at_s - end) < 1e-6 for end in ends):
            out.append(Event(n.at_s, running))
        elif n.kind == "level_change" and n.power_w is not None and before is not None:
            out.append(Event(n.at_s, n.power_w - before))  # 0 W: plans nothing
    return tuple(out)


def _trains(notices: list[Notice]) -> dict[Notice, float]:
    """Each pause_start with a duration: its interval in its job's train."""
    jobs: dict[str | None, list[Notice]] = {}
    for n in notices:
        if n.kind == "pause_start" and n.duration_s:
            jobs.setdefault(n.job_id, []).append(n)
    out = {}
    for pauses in jobs.values():
        every = train_intervals([(n.at_s, n.duration_s or 0.0) for n in pauses])
        out |= dict(zip(pauses, every, strict=True))
    return out
