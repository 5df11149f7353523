"""One re-plan, as replay and the live loop both run it: the notices out now and, learning,
the pauses the rhythm predicts, turned into the planner's feed-forward over its horizon. Pure:
a memory and what was seen since the last re-plan in, the feed-forward and the next memory out.

The shells around it only differ in where their inputs come from: replay's `_Planner` takes
the notices announced by each re-plan's trace time and the trace's loads; the live
`controller.planning.Planner` takes the tick's pending notices and the loads its ticks saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from controller.config import DispatchConfig, PlannerSettings
from controller.dispatch import rhythm
from controller.dispatch.planner import (
    Draw,
    Event,
    JobDraws,
    PlanSettings,
    PlanState,
    draws_of,
    events_of,
    plan,
)
from controller.dispatch.rhythm import Rhythm
from controller.notices import Notice

MAX_GAP_S = 2.0  # loads missing this long at most (ticks that saw none) are held over
PLAN_KEEP_TAUS = 10.0  # a change stays in the plan this many low-pass time constants after it
LEARNED_LEAD_S = 10.0  # a learned pause is planned from this long before it (its ramp: ~4 s)
DRAWS_KEPT = 4  # per job: the latest draws said by notices now over
JOBS_KEPT = 256  # jobs whose draws are kept: those heard of last (a site runs jobs for ever)


@dataclass(frozen=True)
class Replanning:
    """What every re-plan runs with."""

    plan: PlanSettings
    job_w: float  # what a job adds when its notice does not say, W
    learn: rhythm.RhythmSettings | None = None  # None: no rhythm learned

    @property
    def keep_s(self) -> float:
        return PLAN_KEEP_TAUS * self.plan.lowpass_tau_s


@dataclass(frozen=True)
class Memory:
    """What one re-plan leaves the next."""

    plan: PlanState = ()
    rhythm: Rhythm | None = None  # None: nothing seen yet (or not learning)
    learned: tuple[Event, ...] = ()  # the predicted pauses held
    draws: tuple[Draw, ...] = ()  # what jobs draw, said by notices now over (`remember`)


def plan_settings(d: DispatchConfig, p: PlannerSettings | None = None) -> PlanSettings:
    """The planner's settings from the dispatch in force (its ramps and low-pass) and, live,
    the site's `planner` section (replay: that section's defaults)."""
    if p is None:
        p = PlannerSettings()
    return PlanSettings(
        d.ramp_up_w_per_s,
        d.ramp_down_w_per_s,
        d.lowpass_tau_s,
        lead_ratio=p.lead_ratio,
        late_ramp_s=min(p.late_ramp_s, p.give_up_s),
        give_up_s=p.give_up_s,
        horizon_s=p.horizon_s,
        train_swing_ratio=p.train_swing_ratio,
    )


def replan(
    memory: Memory,
    now_s: float,
    dt_s: float,
    notices: Iterable[Notice],
    seen_w: np.ndarray,
    lowpass_w: float,
    s: Replanning,
) -> tuple[np.ndarray, Memory]:
    """The feed-forward per tick from now_s (W) and the next memory. notices: those out now
    (and those just over, kept `s.keep_s`, so a change's plan fades as the filter catches
    up); seen_w: the loads since the last re-plan, one per tick, the last at now_s − dt_s."""
    notices = list(notices)
    learned, memory = _learned(memory, now_s, dt_s, seen_w, notices, s)
    events = events_of(notices, s.job_w, memory.draws) + learned
    ff, state = plan(now_s, dt_s, events, memory.plan, seen_w, lowpass_w, s.plan)
    draws = remember(memory.draws, notices, now_s, s)
    return ff, replace(memory, plan=state, draws=draws)


def remember(
    known: tuple[Draw, ...], notices: list[Notice], now_s: float, s: Replanning
) -> tuple[Draw, ...]:
    """The draws of notices whose time has come, kept after the notices leave the planner's
    view, so a level change hours into a job is planned from what the job's start said.
    Kept: each job's draw before its earliest notice still in view and all after it (so no
    change in view is ever measured from another draw than the one it was planned from), and
    at least its latest DRAWS_KEPT, for the JOBS_KEPT jobs heard of last. Not kept: a notice
    whose time has not come, or one gone from view while still pending: cancelled."""
    in_view = draws_of(notices, s.job_w)
    listed = {(d.job_id, d.order) for d in in_view}
    # Remembered and gone from view while still pending: cancelled.
    still = [d for d in known if (d.job_id, d.order) in listed or d.ends_s <= now_s]
    draws = JobDraws(still + [d for d in in_view if d.at_s <= now_s])
    earliest: dict[str, float] = {}
    for n in notices:
        if n.job_id is not None:
            earliest[n.job_id] = min(earliest.get(n.job_id, n.at_s), n.at_s)
    jobs = []
    for job, ds in draws.jobs():
        keep_from = max(0, len(ds) - DRAWS_KEPT)
        if job in earliest:  # the draw before its earliest notice in view, and all after
            keep_from = min(keep_from, max(0, draws.count_before(job, earliest[job]) - 1))
        jobs.append(ds[keep_from:])
    jobs = sorted(jobs, key=lambda ds: ds[-1].order)[-JOBS_KEPT:]
    return tuple(d for ds in jobs for d in ds)


def _learned(
    memory: Memory,
    now_s: float,
    dt_s: float,
    seen_w: np.ndarray,
    notices: list[Notice],
    s: Replanning,
) -> tuple[tuple[Event, ...], Memory]:
    """The predicted pauses held so far, less those a notice announces (it knows better)."""
    if s.learn is None:
        return (), memory
    first_s = now_s - seen_w.size * dt_s
    learnt = rhythm.learn(_joined(memory.rhythm, first_s, dt_s, s.learn), seen_w, s.learn)
    near_s = (learnt.interval_s or 0.0) / 2.0
    predicted = rhythm.forecast(learnt, now_s, s.learn)
    held = rhythm.hold(memory.learned, predicted, now_s, LEARNED_LEAD_S, s.keep_s, near_s)
    told = [n.at_s for n in notices if n.kind == "pause_start"]
    kept = tuple(e for e in held if all(abs(e.at_s - t) >= near_s for t in told))
    return kept, replace(memory, rhythm=learnt, learned=held)


def _joined(
    learnt: Rhythm | None, first_s: float, dt_s: float, settings: rhythm.RhythmSettings
) -> Rhythm:
    """The rhythm the new loads (the first at first_s) follow on from. Its ring's clock is
    its sample count, so a gap (live, ticks that saw no load) would set every pause it
    learns early: up to MAX_GAP_S the last load is held over it; a longer one, or loads
    that do not follow on, start the learning again."""
    if learnt is None:
        return rhythm.start(dt_s, first_s)
    missing = round((first_s - learnt.end_s) / dt_s)
    if missing == 0:
        return learnt
    if 0 < missing * dt_s <= MAX_GAP_S and learnt.load_w.size:
        return rhythm.learn(learnt, np.full(missing, learnt.load_w[-1]), settings)
    return rhythm.start(dt_s, first_s)
