"""M&V of demand-response events: baselines, response, hold, energy not drawn, on synthetic 1 Hz
samples with known answers; and the reads from a real store."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.mv import (
    BEFORE,
    DAY_S,
    SIMILAR_DAYS,
    MvSettings,
    Samples,
    performance,
)
from controller.mv_history import history_for, load_samples, performance_of
from controller.operations import Event
from controller.store import Store

T0 = datetime(2026, 11, 25, 14, tzinfo=UTC).timestamp()  # a Wednesday, 14:00 UTC
MW = 1e6
S = MvSettings()


def measure(kind: str, value_w: float, samples: Samples, duration_s: float = 600.0, **kw):
    """One Samples serves as during, before and history (each window takes its part)."""
    now_s = kw.pop("now_s", T0 + duration_s)
    s = kw.pop("s", S)
    return performance(
        kind, value_w, T0, T0 + duration_s, 7, samples, samples, samples, now_s, s, **kw
    )


def ramp(to_w: float = 8 * MW, rate_w_per_s: float = 0.5 * MW, duration_s: float = 600.0):
    """A flat 10 MW draw until T0, then down at `rate` to `to_w` and held there."""
    t = np.arange(T0 - 900, T0 + duration_s)
    g = np.where(t < T0, 10 * MW, np.maximum(to_w, 10 * MW - rate_w_per_s * (t - T0)))
    return Samples(t, g)


def test_an_import_cap_reached_on_a_ramp_responds_holds_and_not_draws_the_triangle_less():
    p = measure("import_cap", 8 * MW, ramp())
    assert p.baselines[SIMILAR_DAYS].mean_w is None  # no history: the `before` one
    assert p.baseline.method == BEFORE and p.baseline.mean_w == 10 * MW
    assert p.baseline.coverage == 1.0
    assert p.asked_w == pytest.approx(2 * MW)
    # 90 % of the 2 MW asked at 0.5 MW/s: 3.6 s (interpolated between the samples).
    assert p.response_time_s == pytest.approx(3.6, abs=1.0)
    assert p.held is True and p.held_share == 1.0 and p.worst_excess_w == 0.0
    # 2 MW for 600 s less the ramp's triangle (4 s × 2 MW / 2).
    assert p.energy_not_drawn_j == pytest.approx(2 * MW * 600 - 4 * MW)
    assert p.delivered_mean_w == pytest.approx((2 * MW * 600 - 4 * MW) / 600)
    assert p.delivered_share == pytest.approx(p.delivered_mean_w / (2 * MW))
    assert p.coverage == 1.0 and p.samples == 600 and p.nan_samples == 0
    assert p.running is False and p.reason is None
    assert p.tolerance_w == 20_000.0  # 1 % of 2 MW


def test_a_shed_is_measured_against_its_value():
    t = np.arange(T0 - 900, T0 + 600)
    g = np.where(t < T0 + 2, 10 * MW, 9 * MW)  # 1 MW off two seconds in
    p = measure("shed", 1 * MW, Samples(t, g))
    assert p.asked_w == pytest.approx(1 * MW)
    assert p.response_time_s == pytest.approx(1.9)  # 0.9 MW of the 1 MW step at 1→2 s
    assert p.held is True
    assert p.energy_not_drawn_j == pytest.approx(1 * MW * 598 + 0.5 * MW)
    assert p.tolerance_w == 10_000.0  # 1 % of 1 MW is below the minimum


def test_a_cap_never_reached_has_no_response_and_is_not_held():
    p = measure("import_cap", 8 * MW, ramp(to_w=9 * MW))
    assert p.response_time_s is None
    assert p.held is False and p.held_share is None
    assert p.worst_excess_w == pytest.approx(2 * MW)  # at the start, 10 MW over an 8 MW cap
    assert p.delivered_share == pytest.approx(0.5, abs=0.01)


def test_a_cap_reached_then_lost_is_not_held_and_reports_its_worst_excess():
    samples = ramp()
    g = samples.grid_w.copy()
    g[(samples.time_s >= T0 + 300) & (samples.time_s < T0 + 320)] = 8.5 * MW
    p = measure("import_cap", 8 * MW, Samples(samples.time_s, g))
    assert p.response_time_s == pytest.approx(3.6)
    assert p.held is False and p.held_share == pytest.approx(1 - 20 / 596, abs=1e-9)
    assert p.worst_excess_w == pytest.approx(0.5 * MW)


def daily(t: np.ndarray) -> np.ndarray:
    """10 MW ± 2 MW over the day, lowest in the morning and highest at 18:00 UTC."""
    return 10 * MW + 2 * MW * np.sin(2 * np.pi * (t % DAY_S) / DAY_S)


def shaped_history(days: int = 12, weekend_extra_w: float = 3 * MW) -> Samples:
    """`days` days of the daily shape before T0's day and the event's day; weekends draw more."""
    t = np.arange(T0 - days * DAY_S - 4 * 3600, T0 + 2 * 3600, dtype=float)
    weekend = ((np.floor(t / DAY_S) + 3) % 7) >= 5
    return Samples(t, daily(t) + np.where(weekend, weekend_extra_w, 0.0))


def shed_on(history: Samples, shed_w: float = 1 * MW) -> Samples:
    g = history.grid_w - np.where(history.time_s >= T0, shed_w, 0.0)
    return Samples(history.time_s, g)


def test_the_similar_days_baseline_follows_the_daily_shape_and_before_does_not():
    samples = shed_on(shaped_history())
    p = measure("shed", 1 * MW, samples, duration_s=7200)
    sim, bef = p.baselines[SIMILAR_DAYS], p.baselines[BEFORE]
    assert p.baseline is sim
    # Nov 13-24 hold 8 weekdays (the 4 weekend days, 3 MW higher, are skipped).
    assert sim.days == 8 and sim.coverage == 1.0
    t = samples.between(T0, T0 + 7200).time_s
    assert sim.curve_w is not None
    assert np.max(np.abs(sim.curve_w - daily(t))) < 1.0
    assert p.delivered_mean_w == pytest.approx(1 * MW, abs=1.0)
    assert p.held is True
    # The draw falls ~0.7 MW over the two hours: `before`, flat at 14:00's, counts the fall as
    # delivered.
    assert bef.mean_w == pytest.approx(daily(np.array([T0 - 450]))[0], abs=0.1 * MW)
    by_before = measure("shed", 1 * MW, samples, 7200, s=MvSettings(primary=BEFORE))
    assert by_before.baseline is by_before.baselines[BEFORE]
    assert by_before.delivered_mean_w is not None
    assert by_before.delivered_mean_w > 1.3 * MW


def test_a_day_with_an_event_is_no_similar_day():
    history = shaped_history()
    g = history.grid_w.copy()
    monday = T0 - 2 * DAY_S  # the event ran in its morning: the whole day is left out
    g[(history.time_s >= monday - 5 * 3600) & (history.time_s < monday + 4 * 3600)] = 0.0
    samples = shed_on(Samples(history.time_s, g))
    other = [(monday - 5 * 3600, monday - 4 * 3600)]
    p = measure("shed", 1 * MW, samples, 7200, other_events=other)
    assert p.baseline.method == SIMILAR_DAYS and p.baseline.days == 7
    assert p.baseline.curve_w is not None
    assert np.max(np.abs(p.baseline.curve_w - daily(samples.between(T0, T0 + 7200).time_s))) < 1


def test_too_few_similar_days_fall_back_to_before_with_a_reason():
    samples = shed_on(shaped_history(days=2))  # Mon and Tue only
    p = measure("shed", 1 * MW, samples, 3600)
    sim = p.baselines[SIMILAR_DAYS]
    assert sim.mean_w is None and sim.days == 2
    assert sim.reason is not None and "need 3" in sim.reason
    assert p.baseline.method == BEFORE and p.reason is None


def test_a_sparse_day_is_skipped_and_the_weekday_follows_the_utc_offset():
    history = shaped_history()
    keep = ~((history.time_s >= T0 - DAY_S) & (history.time_s < T0 - DAY_S + 720))  # 10 % gone
    samples = shed_on(Samples(history.time_s[keep], history.grid_w[keep]))
    assert measure("shed", 1 * MW, samples, 3600).baseline.days == 7
    # At UTC+11 the event starts Thursday 01:00 local, and local weekdays are picked: two of
    # them (Mon 23 and Mon 16, 01:00) are Sundays 14:00 in UTC, whose draw is 3 MW higher.
    p = measure("shed", 1 * MW, samples, 3600, s=MvSettings(utc_offset_s=11 * 3600))
    assert p.baseline.days == 7 and p.baseline.curve_w is not None
    t = samples.between(T0, T0 + 3600).time_s
    assert np.max(np.abs(p.baseline.curve_w - daily(t) - 3 * MW * 2 / 7)) < 1.0


def test_nan_samples_are_counted_and_gaps_are_not_integrated():
    samples = ramp()
    keep = ~((samples.time_s >= T0 + 100) & (samples.time_s < T0 + 120))
    t, g = samples.time_s[keep], samples.grid_w[keep].copy()
    g[np.isin(t, [T0 + 300, T0 + 301])] = math.nan
    p = measure("import_cap", 8 * MW, Samples(t, g))
    assert p.nan_samples == 2 and p.samples == 600 - 20 - 2
    assert p.coverage == pytest.approx((600 - 21) / 600)  # 99 → 120 is past the 5 s gap
    assert p.energy_not_drawn_j == pytest.approx(2 * MW * (600 - 21) - 4 * MW)
    assert p.held is True


def test_a_running_event_has_its_figures_so_far():
    p = measure("import_cap", 8 * MW, ramp(), now_s=T0 + 300)
    assert p.running is True and p.samples == 300
    assert p.energy_not_drawn_j == pytest.approx(2 * MW * 300 - 4 * MW)
    assert p.held is True and p.end_s == T0 + 600


@pytest.mark.parametrize(
    ("during", "now_s", "reason"),
    [
        (Samples.empty(), T0 + 600, "no grid samples"),
        (Samples(np.arange(T0, T0 + 10), np.full(10, math.nan)), T0 + 600, "no grid samples"),
        (ramp(), T0 - 10, "not started"),
    ],
)
def test_no_data_gives_a_performance_without_figures(during: Samples, now_s: float, reason: str):
    p = measure("shed", 1 * MW, during, now_s=now_s)
    assert p.reason is not None and reason in p.reason
    assert p.energy_not_drawn_j is None and p.response_time_s is None and p.held is None
    json.dumps(p.to_json(series_step_s=60), allow_nan=False)


def test_no_baseline_at_all_gives_a_reason():
    t = np.arange(T0, T0 + 600)
    p = measure("shed", 1 * MW, Samples(t, np.full(600, 9 * MW)))
    assert p.reason is not None and p.reason.startswith("no baseline")
    assert p.asked_w is None and p.samples == 0


def test_before_leaves_out_other_events_and_reports_its_coverage():
    samples = ramp()
    g = samples.grid_w.copy()
    g[samples.time_s < T0 - 450] = 5 * MW  # the draw under an earlier event
    p = measure("import_cap", 8 * MW, Samples(samples.time_s, g), other_events=[(0, T0 - 450)])
    assert p.baselines[BEFORE].mean_w == 10 * MW
    assert p.baselines[BEFORE].coverage == pytest.approx(0.5)


def test_to_json_is_json_safe_and_series_downsamples():
    p = measure("import_cap", 8 * MW, ramp())
    out = p.to_json(series_step_s=60)
    text = json.dumps(out, allow_nan=False)
    assert "curve" not in text and "series" not in json.dumps(p.to_json())
    series = out["series"]
    assert len(series["time_s"]) == 10 and series["time_s"][0] == T0
    assert series["baseline_w"] == [10 * MW] * 10
    assert series["delivered_w"][-1] == pytest.approx(2 * MW)
    assert out["baselines"][SIMILAR_DAYS]["mean_w"] is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("before_window_s", 0.0),
        ("before_window_s", math.nan),
        ("similar_days", 0),
        ("similar_days", 2.5),
        ("min_similar_days", 11),
        ("search_days", 5),
        ("min_coverage", 1.5),
        ("utc_offset_s", 20 * 3600.0),
        ("response_share", 0.0),
        ("hold_tolerance_ratio", -0.1),
        ("hold_tolerance_min_w", math.inf),
        ("held_share", "high"),
        ("max_gap_s", -1.0),
        ("primary", "average"),
    ],
)
def test_bad_settings_are_refused_by_name(name: str, value: object):
    with pytest.raises(ValueError, match=f"mv settings: {name} must be"):
        MvSettings(**{name: value})  # type: ignore[arg-type]


def test_a_bad_event_kind_is_refused():
    with pytest.raises(ValueError, match="event kind"):
        measure("curtail", 1 * MW, ramp())


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from([0.5, 1.0, 1.0, 2.0, 7.0]), st.floats(-2e7, 2e7)),
        min_size=1,
        max_size=80,
    ),
    kind=st.sampled_from(["import_cap", "shed"]),
)
def test_energy_is_the_integral_of_delivered_and_held_needs_a_response(steps, kind):
    t = T0 + np.cumsum([0.0] + [dt for dt, _ in steps[1:]])
    g = np.array([w for _, w in steps])
    before = Samples(np.arange(T0 - 900, T0), np.full(900, 10 * MW))
    end = float(t[-1]) + 1.0
    p = performance(kind, 8 * MW, T0, end, 1, Samples(t, g), before, before, end, S)
    d = 10 * MW - g
    expected = d[-1] * 1.0  # the last sample holds to the end
    for i in range(1, len(t)):
        dt = t[i] - t[i - 1]
        if dt <= S.max_gap_s:
            expected += (d[i] + d[i - 1]) / 2 * dt
    assert p.energy_not_drawn_j == pytest.approx(expected, rel=1e-9, abs=1e-3)
    assert not p.held or p.response_time_s is not None
    assert p.response_time_s is None or 0 <= p.response_time_s <= end - T0
    json.dumps(p.to_json(series_step_s=5), allow_nan=False)


def test_history_is_read_from_the_store_window_by_window(tmp_path: Path):
    store = Store(tmp_path / "gridpilot.sqlite")
    start, end = T0, T0 + 120
    try:
        # Today and the 5 days before: the interval with a minute around (1440 rows: fewer than
        # the writer holds at once, 3600, past which it sheds samples).
        for k in range(6):
            for t in np.arange(start - k * DAY_S - 60, end - k * DAY_S + 60):
                grid = None if t == start - DAY_S + 60 else float(daily(np.array([t]))[0])
                store.sample({"time_s": float(t), "mode": "auto", "grid_w": grid})
    finally:
        store.close()  # drains the writer
    assert store.writer.shed_total == 0
    s = MvSettings(search_days=10)
    history = history_for(store.query, start, end, s)
    assert history.time_s.size == 5 * 120  # only the windows, not the minutes around
    assert np.isnan(history.grid_w).sum() == 1
    for k in range(1, 6):
        day = history.between(start - k * DAY_S, end - k * DAY_S)
        assert day.time_s.size == 120
    during = load_samples(store.query, start, end)
    assert during.time_s.size == 120 and during.time_s[0] == start
    event = Event(3, "import_cap", 8 * MW, start, end, started=True, cancelled=False)
    p = performance_of(store.query, event, end + 5, s)
    # Wed's previous weekdays: Tue, Mon, Fri (Sat and Sun are weekend days).
    assert p.baseline.method == SIMILAR_DAYS and p.baseline.days == 3
    assert p.baselines[BEFORE].coverage == pytest.approx(60 / 900)
    assert p.delivered_mean_w == pytest.approx(0.0, abs=1.0)  # nothing was shed
