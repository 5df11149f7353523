"""The learned rhythm: the step period and the pause interval of the shared training trace as its
events file has them; no rhythm claimed on inference; a known synthetic rhythm; one miss
stops the forecast; with the learner on, the replay keeps the ramp and SoC limits and its
figures are reproducible."""

from __future__ import annotations

import csv
import json
import subprocess
from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import DispatchConfig
from controller.dispatch import core, rhythm
from controller.dispatch.planner import Event
from controller.dispatch.replan import Memory, Replanning, plan_settings, replan
from controller.replay.run import ReplaySettings, report, simulate, window
from controller.replay.trace import read_trace
from tests.processes import GRIDPILOT
from tests.test_planner import EVENTS, ROOT, TRAINING, assert_limits_hold

INFERENCE = ROOT / "drivers" / "sim" / "traces" / "h200_infer_llama1p1b.csv"
RS = rhythm.RhythmSettings()


def learned(load_w: np.ndarray, dt_s: float, every_s: float = 1.0) -> list[rhythm.Rhythm]:
    """The learner fed once every every_s, as the replay feeds it: its state after each."""
    state, out, n = rhythm.start(dt_s), [], max(1, round(every_s / dt_s))
    for i in range(0, len(load_w), n):
        state = rhythm.learn(state, load_w[i : i + n])
        out.append(state)
    return out


def truth() -> tuple[float, float]:
    """The events file's median step period and median interval between checkpoints."""
    rows = list(csv.DictReader(EVENTS.read_text().splitlines()))
    steps = [float(r["t_start_s"]) for r in rows if r["kind"] == "train_step"]
    pauses = [float(r["t_start_s"]) for r in rows if r["kind"] == "checkpoint_start"]
    return float(np.median(np.diff(steps))), float(np.median(np.diff(pauses)))


def synthetic(
    seconds: float,
    dt_s: float,
    period_s: float,
    interval_s: float,
    pause_s: float,
    pauses_until_s: float = np.inf,
    seed: int = 3,
) -> np.ndarray:
    """A site training in steps (a short low at each step's end), pausing every interval_s
    (from interval_s on) for pause_s, until pauses_until_s; a little noise."""
    t = np.arange(round(seconds / dt_s)) * dt_s
    load = np.where((t % period_s) < 0.75 * period_s, 8e6, 3.5e6)
    phase = t % interval_s
    paused = (t >= interval_s) & (phase < pause_s) & (t < pauses_until_s)
    load = np.where(paused, 3.2e6, load)
    return load + np.random.default_rng(seed).normal(0.0, 5e4, len(t))


def test_the_training_trace_rhythm_matches_its_events_file():
    period, interval = truth()  # 0.479 s, 10.17 s
    tr = read_trace(TRAINING)
    states = learned(tr.site_load_w(10_000, 2e6), tr.dt_s)
    end = states[-1]
    assert end.period_s == pytest.approx(period, rel=0.05)
    assert end.interval_s == pytest.approx(interval, rel=0.05)
    assert end.duration_s == pytest.approx(3.0, abs=0.25)  # 3 s, read at 0.1 s samples
    assert end.pause_w < 0.5 * end.compute_w
    # Confident once two intervals agree: after the third checkpoint (43.9 s), not before.
    first = next(s.end_s for s in states if rhythm.confident(s, s.end_s))
    assert 44.0 < first < 47.0
    ahead = rhythm.forecast(states[50], states[50].end_s)  # at 51 s: the 54.1 s checkpoint next
    assert ahead and ahead[0].at_s == pytest.approx(54.093, abs=0.3)
    assert ahead[0].duration_s == pytest.approx(3.0, abs=0.25)


def test_no_rhythm_is_claimed_on_inference():
    tr = read_trace(INFERENCE)
    for s in learned(tr.site_load_w(10_000, 2e6), tr.dt_s):
        assert not rhythm.confident(s, s.end_s) and rhythm.forecast(s, s.end_s) == ()


@pytest.mark.parametrize(
    ("dt_s", "period_s", "interval_s"), [(0.1, 0.45, 12.0), (0.02, 0.33, 17.0)]
)
def test_a_known_rhythm_is_learned_and_forecast(dt_s, period_s, interval_s):
    load = synthetic(80.0, dt_s, period_s, interval_s, 2.5)
    end = learned(load, dt_s)[-1]
    assert end.period_s == pytest.approx(period_s, rel=0.03)
    assert end.interval_s == pytest.approx(interval_s, rel=0.02)
    assert end.duration_s == pytest.approx(2.5, abs=2 * dt_s + 0.05)
    assert end.compute_w == pytest.approx(0.75 * 8e6 + 0.25 * 3.5e6, rel=0.05)
    assert end.pause_w == pytest.approx(3.2e6, rel=0.02)
    ahead = rhythm.forecast(end, end.end_s)
    at = [e.at_s for e in ahead]
    want = [k * interval_s for k in range(1, 20) if end.end_s - 3 < k * interval_s < end.end_s + 30]
    np.testing.assert_allclose(at[-len(want) :], want, atol=0.3)
    assert all(e.delta_w == pytest.approx(end.pause_w - end.compute_w) for e in ahead)
    assert all(e.every_s == end.interval_s for e in ahead)  # planned as a train


def test_loads_missing_live_keep_the_rhythms_clock_or_start_it_again():
    """Live, ticks that saw no load leave gaps between re-plans' loads: a short one is held
    over (the learned pauses stay where they are), a long one starts the learning again."""
    dt_s, interval_s = 0.1, 10.0
    load = synthetic(80.0, dt_s, 0.5, interval_s, 3.0)
    s = Replanning(plan_settings(DispatchConfig()), 5e6, RS)

    def fed(skip: slice) -> Memory:
        memory, kept = Memory(), np.ones(len(load), dtype=bool)
        kept[skip] = False
        for i in range(10, len(load) + 1, 10):  # once a second, the loads the ticks kept
            ticks = np.flatnonzero(kept[i - 10 : i]) + i - 10
            if ticks.size:  # planned from the tick after the newest that saw a load
                now_s = (ticks[-1] + 1) * dt_s
                _, memory = replan(memory, now_s, dt_s, (), load[ticks], load[ticks[-1]], s)
        return memory

    whole, short, long = fed(slice(0, 0)), fed(slice(604, 619)), fed(slice(600, 630))
    assert whole.rhythm.end_s == short.rhythm.end_s == pytest.approx(80.0)
    assert short.rhythm.interval_s == pytest.approx(whole.rhythm.interval_s, abs=0.1)
    assert [round(e.at_s, 1) for e in short.learned] == [round(e.at_s, 1) for e in whole.learned]
    assert short.learned and all(abs(e.at_s - round(e.at_s, -1)) < 0.3 for e in short.learned)
    # 3 s missing: learning again from 63 s, too soon to trust an interval by 80 s
    assert long.rhythm.end_s == pytest.approx(80.0) and long.rhythm.load_w.size == 170
    assert long.rhythm.confidence < RS.min_consistent


def test_a_rhythm_that_stops_is_no_longer_forecast_after_one_miss():
    dt_s, interval_s = 0.1, 10.0
    load = synthetic(120.0, dt_s, 0.5, interval_s, 3.0, pauses_until_s=55.0)  # last at 50 s
    states = learned(load, dt_s)
    predicted = {round(e.at_s) for s in states for e in rhythm.forecast(s, s.end_s)}
    assert 60 in predicted  # the next one was forecast while the rhythm held
    after = [s for s in states if s.end_s > 60.0 + rhythm.late_s(s)]
    assert after and all(rhythm.forecast(s, s.end_s) == () for s in after)
    # Pauses that come again are trusted again once two intervals agree.
    back = np.r_[load[: round(90 / dt_s)], synthetic(70.0, dt_s, 0.5, interval_s, 3.0, seed=4)]
    again = learned(back, dt_s)
    assert rhythm.forecast(again[-1], again[-1].end_s)


def test_held_predictions_keep_their_value_until_well_after():
    first = (Event(20.0, -4e6, 3.0), Event(30.0, -4e6, 3.0))
    held = rhythm.hold((), first, 12.0, 10.0, 5.0, 5.0)
    assert held == first[:1]  # only what is within the lead
    moved = (Event(20.2, -4.1e6, 3.1), Event(30.1, -4e6, 3.0))
    held = rhythm.hold(held, moved, 21.0, 10.0, 5.0, 5.0)
    assert held == (first[0], moved[1])  # the first as it was taken; the second as it came
    assert rhythm.hold(held, (), 28.5, 10.0, 5.0, 5.0) == (moved[1],)  # 5 s after the first ended


@st.composite
def rhythmic_loads(draw):
    """A load that pauses regularly for a while (so the learner predicts), then maybe not."""
    interval = draw(st.floats(4.0, 15.0))
    load = synthetic(
        draw(st.floats(30.0, 80.0)),
        0.1,
        draw(st.floats(0.3, 0.6)),
        interval,
        draw(st.floats(1.2, 0.6 * interval)),
        pauses_until_s=draw(st.floats(20.0, 100.0)),
        seed=draw(st.integers(0, 1000)),
    )
    scale = draw(st.floats(0.2, 2.0))
    return load * scale, draw(st.floats(0.1, 0.9)), draw(st.floats(1e5, 2e7))


@settings(max_examples=10, deadline=None)
@given(rhythmic_loads())
def test_ramp_and_soc_limits_hold_with_the_learner(scenario):
    load, soc, power_w = scenario
    s = ReplaySettings(battery_w=power_w, battery_wh=2e3, initial_soc=soc)  # a small battery
    assert_limits_hold(simulate(load, 0.1, s, learn=RS), s, load)


def test_replay_learning_the_rhythm_is_reproducible_and_spares_throughput():
    args = [*GRIDPILOT, "replay", str(TRAINING), "--json", "--no-bound", "--learn-rhythm"]
    cli = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    tr = read_trace(TRAINING)
    load = tr.site_load_w(10_000, 2e6)
    first, second = (
        asdict(simulate(load, tr.dt_s, ReplaySettings(), learn=RS).figures) for _ in "ab"
    )
    assert first == second and {k: json.loads(cli.stdout)[k] for k in first} == first
    plain = simulate(load, tr.dt_s, ReplaySettings()).figures
    assert first["grid_max_ramp_w_per_s"] <= 5e5 * (1 + 1e-9) and first["unserved_kwh"] == 0.0
    assert first["battery_throughput_kwh"] < plain.battery_throughput_kwh
    assert first["band_attenuation_db"] < -20.0


def test_a_warm_window_counts_from_its_start_and_its_bound_starts_where_the_run_stood():
    tr = read_trace(TRAINING)
    load = tr.site_load_w(10_000, 2e6)
    run = simulate(load, tr.dt_s, ReplaySettings(), learn=RS)
    assert window(run, 0, tr.dt_s).figures == run.figures
    first = int((tr.t_s < 23.6).sum())
    late = window(run, first, tr.dt_s)
    assert late.first_battery_w == run.out[first, core.O_BATTERY] != 0.0
    r = report(late, tr.dt_s, ReplaySettings(), True)
    # The online run is one schedule the bound may take: the bound is feasible and lower.
    assert r["throughput_ratio"] >= 1.0 and r["capacity_ratio"] >= 1.0
