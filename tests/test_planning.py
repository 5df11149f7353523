"""The planner in the live loop: a notice posted through the API moves the grid before its
time within the ramp limit; plans are made in a process of their own, and one that hangs or
dies stalls no tick (its stale plan is not used) and is replaced; a plan that raises there is
an error and the process goes on; a job that never comes is given up and plain smoothing
follows; off, the decisions are today's, to the bit."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from asyncio import Event
from functools import partial
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from controller.config import DispatchConfig, PlannerSettings, SiteConfig
from controller.decide import ControlState, cooling_config, decide
from controller.dispatch.replan import Memory, plan_settings
from controller.dispatch.rhythm import RhythmSettings
from controller.notices import Notice
from controller.plan_worker import PlanFailed, PlanningStopped, PlanWorker, Request, on_thread
from controller.plans import Carried, Plan, Seen, make_plan, plan_w_at, remembered
from controller.record import TickRecord
from controller.sitefile import load_site
from tests.plant import modbus_only, site_running, until

EVERY_S = 0.5
JOB_W = 5e6
LEAD_S = 5.0  # the notice's time, after it is posted (the plan crosses 0.35 of 5 MW in 3.5 s)


def quiet_site(site_data: dict[str, Any], **planner: Any) -> SiteConfig:
    """The Modbus plant with no GPUs (a flat 2 MW site load): any move of the grid is the
    planner's."""
    site_data["simulation"]["gpus"] = 0
    site_data["planner"] = planner
    return modbus_only(site_data)


def job_start(at_s: float) -> dict[str, Any]:
    return {"kind": "job_start", "at_s": at_s, "power_w": JOB_W, "job_id": "never-comes"}


def assert_ramp_held(records: list[TickRecord], site: SiteConfig) -> None:
    """Tick to tick, the grid target (frequency response aside: it acts outside the limiter)
    moves by at most the ramp limit over a period, wherever the batteries carry it all."""
    step = max(site.dispatch.ramp_up_w_per_s, site.dispatch.ramp_down_w_per_s) * site.loop_period_s
    auto = [r for r in records if r.mode == "auto" and r.result is not None]
    pairs = [(a, b) for a, b in pairwise(auto) if b.seq == a.seq + 1]
    served = [(a, b) for a, b in pairs if a.result.unserved_w == b.result.unserved_w == 0.0]
    assert len(served) >= 0.95 * len(pairs) > 20
    for a, b in served:
        before = a.result.grid_target_w + a.result.frequency_response_w
        after = b.result.grid_target_w + b.result.frequency_response_w
        assert abs(after - before) <= step * (1 + 1e-9) + 1e-3, (a.seq, before, after)


def stale(rec: TickRecord) -> bool:
    return rec.plan is None or rec.wall_time > rec.plan.until_s


def since(records: list[TickRecord], t_s: float) -> list[TickRecord]:
    return [r for r in records if r.wall_time >= t_s]


def test_planner_settings_are_validated_and_off_by_default():
    assert not PlannerSettings().enabled and not PlannerSettings().learn_rhythm
    with pytest.raises(ValidationError, match="horizon_s"):
        PlannerSettings(every_s=10.0, horizon_s=20.0)  # would end while still in use
    for bad in ({"every_s": 0.0}, {"lead_ratio": 1.5}, {"job_w": -1.0}, {"surprise": 1}):
        with pytest.raises(ValidationError):
            PlannerSettings.model_validate(bad)
    for bad in ({"train_swing_ratio": -0.1}, {"train_swing_ratio": 1.5}):
        with pytest.raises(ValidationError, match="train_swing_ratio"):
            PlannerSettings.model_validate(bad)
    with pytest.raises(ValidationError, match=r"late_ramp_s \(6\) is longer than give_up_s \(5\)"):
        PlannerSettings(late_ramp_s=6.0, give_up_s=5.0)  # would ramp on after the drop
    # A site that only shortened give_up_s still loads: its late ramp is as short.
    assert plan_settings(DispatchConfig(), PlannerSettings(give_up_s=1.0)).late_ramp_s == 1.0
    # The live planner plans with the site's settings (the same re-plan replay runs).
    site = PlannerSettings(
        lead_ratio=0.2, late_ramp_s=1.5, give_up_s=9.0, horizon_s=30.0, train_swing_ratio=0.3
    )
    p = plan_settings(DispatchConfig(), site)
    assert (p.lead_ratio, p.late_ramp_s, p.give_up_s, p.horizon_s, p.train_swing_ratio) == (
        0.2,
        1.5,
        9.0,
        30.0,
        0.3,
    )


def test_the_built_in_site_has_it_off_and_the_environment_turns_it_on(
    monkeypatch: pytest.MonkeyPatch,
):
    assert load_site().planner == PlannerSettings()
    monkeypatch.setenv("GRIDPILOT_PLANNER__ENABLED", "true")
    monkeypatch.setenv("GRIDPILOT_PLANNER__LEARN_RHYTHM", "true")
    site = load_site()
    assert site.planner.enabled and site.planner.learn_rhythm


def test_a_stale_plan_or_none_adds_nothing():
    plan = Plan(100.0, 0.1, np.arange(1.0, 601.0), until_s=101.5)
    assert plan_w_at(None, 100.0) == 0.0
    assert plan_w_at(plan, 99.98) == 1.0  # a tick a little early reads the first value
    assert plan_w_at(plan, 100.52) == 6.0
    assert plan_w_at(plan, 101.5) == 16.0
    assert plan_w_at(plan, 101.51) == 0.0  # stale: the planner has stopped keeping up
    assert Plan(100.0, 0.1, np.ones(3), until_s=1e9).at(100.5) == 0.0  # past its end


def notice(id_: int, at_s: float, ends_s: float) -> Notice:
    return Notice(id_, "job_start", at_s, ends_s, None, JOB_W, None)


def test_a_notice_over_stays_in_the_plan_a_while_and_a_cancelled_one_goes():
    over, cancelled, pending = notice(1, 50.0, 55.0), notice(2, 70.0, 75.0), notice(3, 80, 85)
    kept = remembered((over, cancelled, pending), (pending,), 60.0, 100.0)
    assert kept == (over, pending)
    assert remembered(kept, (pending,), 160.0, 100.0) == (pending,)  # kept no longer


def test_one_live_plan_from_what_the_ticks_saw():
    p = PlannerSettings(enabled=True)
    seen = Seen(1000.0, np.full(10, 2e6), (notice(1, 1004.0, 1009.0),), 2e6, DispatchConfig())
    plan, carried = make_plan(Carried(), seen, 0.1, p, None)
    assert plan.start_s == pytest.approx(1000.1) and plan.until_s == pytest.approx(1003.0)
    assert len(plan.values_w) == 600 and not plan.values_w.flags.writeable
    # 3.9 s ahead of a 5 MW step at 0.5 MW/s: the ramp that crosses 0.35 of it by then
    assert plan.at(1000.1) == pytest.approx(0.0, abs=1.0)
    assert plan.at(1002.0) == pytest.approx(0.35 * JOB_W - 2.0 * 5e5, rel=1e-6)
    assert plan.events == 1 and carried.notices == seen.pending
    assert carried.memory != Memory()


async def test_the_planners_process_plans_as_here_goes_on_after_a_raise_and_stops_when_told():
    p, learn, stop = PlannerSettings(enabled=True, learn_rhythm=True), RhythmSettings(), Event()
    t = np.arange(400) * 0.1
    load = np.where(t % 10.0 < 3.0, 3e6, 8e6)  # a pause every 10 s: a rhythm to learn

    def seen(k: int) -> Seen:  # the k-th second's ticks
        return Seen(1000.0 + k + 0.9, load[10 * k : 10 * k + 10], (), 5e6, DispatchConfig())

    worker = await asyncio.to_thread(PlanWorker)
    try:
        await on_thread(worker, worker.wait_ready, 60.0, stop)
        with pytest.raises(PlanFailed, match=r"(?s)the plan raised: Traceback.*ZeroDivision"):
            worker.ask(Request(Carried(), seen(0), 0.0, p, learn))  # a 0 s period
        assert worker.exit_code is None  # the process goes on
        there = here = Carried()  # what each re-plan leaves the next, there and here
        for k in range(40):
            ask = partial(worker.ask, Request(there, seen(k), 0.1, p, learn))
            plan, there = await on_thread(worker, ask, 30.0, stop)
            made, here = make_plan(here, seen(k), 0.1, p, learn)
            assert np.array_equal(plan.values_w, made.values_w), k
        assert plan.events >= 1 and plan.cpu_s > 0.0 and not plan.values_w.flags.writeable
        ours, theirs = here.memory, there.memory
        assert (theirs.plan, theirs.learned) == (ours.plan, ours.learned) and theirs.learned
        assert np.array_equal(theirs.rhythm.load_w, ours.rhythm.load_w)
        assert theirs.rhythm.confidence == ours.rhythm.confidence >= learn.min_consistent
        assert not theirs.rhythm.load_w.flags.writeable  # read-only, as made
    finally:
        await asyncio.to_thread(worker.close)
    assert worker.exit_code == 0  # its end of the pair closed, it ended by itself

    # The controller stops while a plan hangs: the call ends then, and the process is killed.
    worker = await asyncio.to_thread(PlanWorker)
    try:
        await on_thread(worker, worker.wait_ready, 60.0, stop)
        os.kill(worker.pid, signal.SIGSTOP)
        asyncio.get_running_loop().call_later(0.2, stop.set)
        with pytest.raises(PlanningStopped):
            ask = partial(worker.ask, Request(Carried(), seen(0), 0.1, p, learn))
            await asyncio.wait_for(on_thread(worker, ask, 600.0, stop), 30.0)
        assert await asyncio.to_thread(worker.process.wait, 5) == -signal.SIGKILL
    finally:
        await asyncio.to_thread(worker.close)


async def test_a_notice_moves_the_grid_early_a_stale_plan_is_dropped_a_no_show_given_up(
    site_data: dict[str, Any],
):
    site = quiet_site(site_data, enabled=True, every_s=EVERY_S, hang_s=1.0)
    async with site_running(site) as run:
        records, planner = run.records, run.controller.planner
        assert planner is not None
        await until(lambda: records[-1].plan is not None, 30, "a first plan")
        at_s = time.time() + LEAD_S
        posted = await run.api.post("/v1/notices", json=job_start(at_s))
        assert posted.status_code == 201, posted.text
        load_w = records[-1].site_load_w
        assert records[-1].result.grid_target_w == pytest.approx(load_w, abs=1e5), records[
            -1
        ].result

        # Before its time, the grid is on its way up (the battery charges) ...
        await until(lambda: records[-1].wall_time >= at_s - 0.4, LEAD_S + 1, "just before")
        last = records[-1]
        assert last.decision.plan_w > 1e6, last.decision
        assert last.result.grid_target_w > load_w + 1e6, (last.result, load_w)
        state = (await run.api.get("/v1/state")).json()
        assert state["dispatch"]["plan_w"] > 1e6
        assert state["planner"]["events"] == 1 and not state["planner"]["stale"]
        planned = state["planner"]  # its time: a sanity bound here, bench_loop measures it
        assert 0.0 < planned["cpu_s"] <= planned["work_s"] + 1e-3, planned
        assert planned["work_s"] <= planned["duration_s"] < 0.5, planned
        await run.scrape()
        assert run.metric("gridpilot_plan_feed_forward_watts", site=site.name) > 1e6
        assert run.metric("gridpilot_plan_duration_seconds_count", site=site.name) >= 5

        # ... its plans are made in a process of their own; one that hangs stalls no tick,
        # its stale plan is dropped, and it is replaced (planning goes on where it was) ...
        hung = planner.worker
        assert hung is not None and hung.pid != os.getpid() and hung.exit_code is None
        os.kill(hung.pid, signal.SIGSTOP)
        stuck_at = time.time()
        await asyncio.sleep(site.planner.stale_plans * EVERY_S + 0.2)
        ticks = since(records, stuck_at)
        assert len(ticks) >= 15  # the loop kept its period
        assert ticks[-1].decision.plan_w == 0.0 and ticks[-1].plan.at(ticks[-1].wall_time) == 0
        await until(lambda: records[-1].decision.plan_w > 1e6, 30, "planning again")
        assert planner.failures_total == 1 and planner.worker.pid != hung.pid
        assert hung.exit_code == -signal.SIGKILL  # the hung one is gone, not left behind

        # ... as is one that dies ...
        os.kill(planner.worker.pid, signal.SIGKILL)
        await until(lambda: planner.failures_total == 2, 5, "the death seen")
        await until(lambda: records[-1].plan.events == 1 and not stale(records[-1]), 30, "again")
        await run.scrape()
        assert run.metric("gridpilot_plan_failures_total", site=site.name) == 2

        # ... and the job that never comes is given up: plain smoothing again.
        give_up_s = site.planner.give_up_s
        await until(lambda: records[-1].wall_time > at_s + give_up_s + 5 * EVERY_S, 10, "give-up")
        after = since(records, at_s + give_up_s + 4 * EVERY_S)  # a re-plan or two late at most
        assert [r.decision.plan_w for r in after] == [0.0] * len(after)
        await until(lambda: records[-1].result.grid_target_w < load_w + 1e5, 10, "grid back")
        assert_ramp_held(records, site)


async def test_off_the_decisions_are_todays_to_the_bit(site_data: dict[str, Any]):
    """The planner off (the default), a notice posted: no plan, plan_w 0 at every tick, and
    each decision is the one `decide` makes without a plan argument."""
    site = quiet_site(site_data)
    async with site_running(site) as run:
        records = run.records
        assert run.controller.planner is None
        at_s = time.time() + 2.0
        posted = await run.api.post("/v1/notices", json=job_start(at_s))
        assert posted.status_code == 201, posted.text
        await until(lambda: records[-1].wall_time > at_s + 0.5, 5, "the notice's time")
        assert any(r.in_force.notices for r in records)
        assert all(r.plan is None and r.decision.plan_w == 0.0 for r in records)
        state = (await run.api.get("/v1/state")).json()
        assert state["dispatch"]["plan_w"] == 0.0 and state["planner"] is None
        await run.scrape()
        assert run.metric("gridpilot_plan_feed_forward_watts", site=site.name) == 0.0
        assert run.metric("gridpilot_plan_duration_seconds_count", site=site.name) == 0.0
        control, cooling = ControlState(), cooling_config(site.cooling)
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        for r in records:
            control, again = decide(
                control, r.snapshot, r.readings, r.in_force, cooling, r.period_s, r.seq
            )
            assert (again.mode, again.result, again.commands) == (
                r.decision.mode, r.decision.result, r.decision.commands,
            ), r.seq  # fmt: skip
        assert_ramp_held(records, site)
