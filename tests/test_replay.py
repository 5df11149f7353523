"""Replay and sizing: bad traces refused by line and column, figures right on known signals,
the LP bound never above what the online controller achieved."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import DispatchConfig
from controller.dispatch import core
from controller.replay.bound import (
    BoundProblem,
    OneWay,
    capacity_program,
    min_capacity_kwh,
    realizable_capacity_kwh,
    realizable_schedule,
)
from controller.replay.figures import (
    band_attenuation_db,
    band_energy,
    band_operator,
    stored_energy_j,
)
from controller.replay.run import ReplaySettings, bound_problem, report, simulate, size
from controller.replay.trace import TraceError, read_trace
from tests.processes import GRIDPILOT

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT / "drivers" / "sim" / "traces" / "h200_train_1p7b.csv"
KEYS = {
    "grid_max_ramp_w_per_s",
    "band_attenuation_db",
    "battery_throughput_kwh",
    "required_capacity_kwh",
    "max_battery_w",
    "unserved_kwh",
    "soc_min",
    "soc_max",
    "lp_throughput_kwh",
    "lp_required_capacity_kwh",
    "lp_realizable_capacity_kwh",
    "throughput_ratio",
    "capacity_ratio",
    "realizable_capacity_ratio",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t_s,power\n0,1\n0.1,2\n", "missing column(s) ['gpu_power_w']"),
        ("t_s,gpu_power_w\n0,100\n0.1,nan\n", "line 3, column gpu_power_w: 'nan' is not a finite"),
        ("t_s,gpu_power_w\n0,100\n0.1,inf\n", "line 3, column gpu_power_w: 'inf' is not a finite"),
        ("t_s,gpu_power_w\n0,100\nx,100\n", "line 3, column t_s: 'x' is not a number"),
        ("t_s,gpu_power_w\n0,100\n0.1,\n", "line 3, column gpu_power_w: '' is not a number"),
        ("t_s,gpu_power_w\n0,100\n0.1,-5\n", "line 3, column gpu_power_w: -5.0 W is negative"),
        ("t_s,gpu_power_w\n0,100\n0.1,100\n0.1,100\n", "line 4, column t_s: 0.1 s is not after"),
        ("t_s,gpu_power_w\n0,1\n0.1,1\n0.2,1\n0.35,1\n0.45,1\n", "line 5, column t_s: step 0.15 s"),
        ("t_s,gpu_power_w\n0,100\n", "at least two rows"),
    ],
)
def test_bad_traces_name_line_and_column(tmp_path: Path, text: str, message: str):
    with pytest.raises(TraceError) as err:
        read_trace(write(tmp_path, text))
    assert message in str(err.value)
    assert "trace.csv" in str(err.value)


def test_cli_refuses_a_bad_trace_with_status_2(tmp_path: Path):
    path = write(tmp_path, "t_s,gpu_power_w\n0,100\n0.1,nan\n")
    out = subprocess.run(
        [*GRIDPILOT, "replay", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2
    assert "line 3, column gpu_power_w" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--ramp-w-per-s", "-1"], "--ramp-w-per-s"),
        (["--ramp-w-per-s", "5e-324"], "--ramp-w-per-s"),  # above zero, yet no limit
        (["--energy-return-s", "5e-324"], "--energy-return-s"),  # checked with the site's
        (["--gpus", "-3"], "--gpus"),
        (["--battery-wh", "0"], "--battery-wh"),
        (["--base-w", "nan"], "--base-w"),
    ],
)
def test_cli_refuses_absurd_parameters_with_status_2(args: list[str], named: str):
    out = subprocess.run(
        [*GRIDPILOT, "replay", str(TRAINING), *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr
    assert named in out.stderr and "Traceback" not in out.stderr


def test_soc_band_out_of_order_is_refused():
    with pytest.raises(ValueError, match="soc_min_ratio"):
        DispatchConfig(soc_min_ratio=0.9, soc_max_ratio=0.5)


def test_replay_json_has_every_figure_and_a_plot(tmp_path: Path):
    png = tmp_path / "run.png"
    out = subprocess.run(
        [
            *GRIDPILOT,
            "replay",
            str(TRAINING),
            "--json",
            "--plot",
            str(png),
            "--record",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) >= KEYS
    assert result["grid_max_ramp_w_per_s"] <= 5e5 * (1 + 1e-9)
    assert result["unserved_kwh"] == 0.0
    assert result["band_attenuation_db"] < -10
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the run as the recorder writes one: the compliance report finds the replay's figures
    checked = subprocess.run(
        [*GRIDPILOT, "report", "--data-dir", str(tmp_path / "run"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["range"]["rows"] == result["steps"] and report["range"]["missing_rows"] == 0
    ramp = {r["window_s"]: r for r in report["ramp"]}
    assert ramp[0.1]["max_rate_w_per_s"] == pytest.approx(result["grid_max_ramp_w_per_s"])
    band = next(b for b in report["spectrum"]["bands"] if b["name"] == "0.1-20 Hz")
    assert band["attenuation_db"] == pytest.approx(result["band_attenuation_db"], abs=1e-9)
    assert report["battery"]["throughput_kwh"] == pytest.approx(result["battery_throughput_kwh"])
    assert report["battery"]["unserved_kwh"] == result["unserved_kwh"]
    again = subprocess.run(  # a folder that holds a run already is refused, and kept
        [*GRIDPILOT, "replay", str(TRAINING), "--no-bound", "--record", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2 and "holds recorder data already" in again.stderr


def test_a_planned_replay_records_the_planners_feed_forward(tmp_path: Path):
    """`--events --record`: each row's plan_w is the feed-forward the core was given there,
    the same a run in memory gives; without a planner it is 0."""
    from controller.recorder.reader import RECORDER_DIR, read_table
    from controller.replay.events import read_events
    from controller.replay.record import record_run

    trace = read_trace(TRAINING)
    s = ReplaySettings()
    load = trace.site_load_w(s.gpus, s.base_w)
    told = read_events(TRAINING.with_suffix(".events.csv"), 30.0, 5.0, s.gpus * s.job_w_per_gpu)
    runs = {}
    for name, notices in (("planned", told), ("plain", ())):
        runs[name] = run = simulate(load, trace.dt_s, s, notices=notices)
        record_run(run, trace.dt_s, s, tmp_path / name)
        table = read_table(tmp_path / name / RECORDER_DIR, 0.0, 1e9, ["plan_w"])
        assert table is not None
        np.testing.assert_array_equal(table.column("plan_w").to_numpy(), run.plan_w)
    assert not np.any(runs["plain"].plan_w)  # plain: none at all
    assert np.max(runs["planned"].plan_w) > 1e6  # the start's plan, W


def test_attenuation_of_known_signals():
    dt = 0.1
    t = np.arange(0, 100, dt)
    load = 5e6 + 1e6 * np.sin(2 * np.pi * 1.0 * t)
    assert band_attenuation_db(
        load, 5e6 + 0.1e6 * np.sin(2 * np.pi * 1.0 * t), dt
    ) == pytest.approx(-20, abs=1e-6)
    # What lies outside 0.1 Hz – Nyquist does not count: a slow swing is not penalised.
    slow = 5e6 + 1e6 * np.sin(2 * np.pi * 0.02 * t)
    assert band_attenuation_db(load, slow, dt) < -40


def test_attenuation_is_not_flooded_by_the_record_ends():
    """A load that starts idle and ends busy, and a grid that ramps once and then holds the
    busy mean: nothing of the grid swings in the band. A bare periodogram saw the jump
    between the record's ends and rated this grid at -14.5 dB; the windowed estimate
    sees the smoothing it is."""
    dt = 0.1
    t = np.arange(0, 76, dt)
    busy = t >= 15.0
    swing = np.where((t % 0.5) < 0.38, 7.8e6, 1.5e6)  # a training step's compute and wait
    load = np.where(busy, swing, 1.2e6)
    mean = float(swing[busy].mean())
    grid = np.clip(1.2e6 + (t - 15.0) * 5e5, 1.2e6, mean)
    assert band_attenuation_db(load, grid, dt) < -25


def test_stored_energy_with_efficiency():
    e = stored_energy_j(np.array([1000.0, -1000.0]), 3.6, 0.0, eta_charge=0.9, eta_discharge=0.8)
    np.testing.assert_allclose(e, [-4500.0, -4500.0 + 3240.0])


def _random_trace(seed: int, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    high = rng.random(n) < 0.6
    return 2e6 + np.where(high, 8e6, 1.5e6) + rng.normal(0, 2e5, n).clip(-1e6, 1e6)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), ramp=st.floats(1e5, 2e6), tau=st.floats(0.5, 30))
def test_bound_is_never_above_the_online_run_that_held_every_limit(seed, ramp, tau):
    load = _random_trace(seed)
    s = ReplaySettings(
        ramp_w_per_s=ramp, battery_w=2e7, battery_wh=2e5, dispatch=DispatchConfig(lowpass_tau_s=tau)
    )
    run = simulate(load, 0.1, s)
    result = report(run, 0.1, s, with_bound=True)
    if result["unserved_kwh"] == 0.0:
        assert result["lp_throughput_kwh"] is not None
        assert result["lp_throughput_kwh"] <= result["battery_throughput_kwh"] * (1 + 1e-6)
        assert result["lp_required_capacity_kwh"] <= result["required_capacity_kwh"] * (1 + 1e-6)
        followable = result["lp_realizable_capacity_kwh"]
        assert followable is None or result["lp_required_capacity_kwh"] <= followable * (1 + 1e-6)


def test_training_trace_online_and_bound_side_by_side():
    tr = read_trace(TRAINING)
    s = ReplaySettings()
    run = simulate(tr.site_load_w(s.gpus, s.base_w), tr.dt_s, s)
    result = report(run, tr.dt_s, s, with_bound=True)
    assert result["unserved_kwh"] == 0.0
    assert 1.0 <= result["throughput_ratio"] < 1.5
    assert result["capacity_ratio"] >= 1.0


def test_the_followable_bound_is_a_schedule_a_battery_can_follow():
    """The LP's least capacity charges and discharges at once to burn energy (5 kWh on the
    training trace); the followable bound is a schedule that never does, and holds every
    limit when a battery runs it."""
    tr = read_trace(TRAINING)
    s = ReplaySettings()
    load = tr.site_load_w(s.gpus, s.base_w)
    p = bound_problem(simulate(load, tr.dt_s, s), tr.dt_s, s)
    lower = min_capacity_kwh(p)
    found = realizable_schedule(p)
    assert lower is not None and found is not None
    battery_w, kwh = found
    grid = load - battery_w
    assert np.max(np.abs(np.diff(grid))) / tr.dt_s <= s.ramp_w_per_s * (1 + 1e-6)
    assert np.max(np.abs(battery_w)) <= s.battery_w * (1 + 1e-9)
    assert battery_w[0] == pytest.approx(p.initial_battery_w, abs=1e-6)  # starts as the run did
    e = stored_energy_j(battery_w, tr.dt_s, p.initial_energy_j, p.eta_charge, p.eta_discharge)
    assert np.ptp(np.r_[p.initial_energy_j, e]) / 3.6e6 == pytest.approx(kwh)
    assert e[-1] >= p.final_energy_min_j - 1.0
    assert e.min() >= p.energy_floor_j - 1.0 and e.max() <= p.energy_ceiling_j + 1.0  # 1 J
    # The wasting LP's figure is a quarter under what a battery following a plan can reach.
    assert lower * 1.2 < kwh < 2.2 * lower  # 1.63 and 2.06 kWh here


def one_way_problem(first: int, last: int, battery_w: float = 0.0) -> BoundProblem:
    """Seconds of the training trace as a bound's problem: a battery of 20 MW discharging and
    12 MW charging (unequal, so neither limit stands in for the other), the first step's
    battery at battery_w (positive: discharging), any end."""
    load = 2e6 + 10_000 * read_trace(TRAINING).gpu_power_w[first:last]
    return BoundProblem(
        load_w=load, dt_s=0.1, ramp_up_w_per_s=5e5, ramp_down_w_per_s=5e5,
        discharge_max_w=2e7, charge_max_w=1.2e7, energy_floor_j=0.0, energy_ceiling_j=1e12,
        initial_energy_j=5e11, final_energy_min_j=0.0, eta_charge=0.96, eta_discharge=0.96,
        initial_battery_w=battery_w,
    )  # fmt: skip


@pytest.mark.parametrize("battery_w", [0.0, 1e6, -1e6])
def test_one_way_at_a_time_the_least_stored_energy_is_what_a_battery_needs(battery_w: float):
    """`OneWay` solves the least-stored-energy program with a binary per step, a battery's
    charging or discharging: on six seconds of training (a checkpoint and the compute around
    it) the linear program burns energy to need less (3.6 kWh starting idle); one way at a
    time it takes 4.1 kWh, proven (its dual bound) and found, with a schedule that starts as
    told, never flows both ways and holds the ramp and each limit; the followable bound finds
    the same here."""
    p = one_way_problem(220, 280, battery_w)
    solver = OneWay(time_limit_s=60.0)
    x = solver(p, capacity_program(p, 0.0))
    assert x is not None and solver.gap <= 1e-4
    n = len(p.load_w)
    discharge, charge = x[:n], x[n : 2 * n]
    assert discharge[0] - charge[0] == pytest.approx(battery_w)
    assert np.all(np.minimum(discharge, charge) <= 1e-6)  # one way in every step
    assert discharge.max() <= p.discharge_max_w + 1e-3 and charge.max() <= p.charge_max_w + 1e-3
    grid = p.load_w - discharge + charge
    assert np.max(np.abs(np.diff(grid))) / p.dt_s <= p.ramp_up_w_per_s * (1 + 1e-6)
    found = (x[-2] - x[-1]) / 3.6e6
    lp = min_capacity_kwh(p)
    assert lp is not None and found >= solver.dual_kwh - 1e-6
    assert solver.dual_kwh > 1.1 * lp  # 1.12–1.17 of it here: the LP's waste is no battery's
    assert found == pytest.approx(realizable_capacity_kwh(p), rel=1e-3)


def test_one_way_stopped_early_still_proves_a_lower_bound():
    """Stopped after its first node, `OneWay` keeps a dual bound between the linear program's
    figure and the schedule it found: proven, not the found one's (on 40 s of the trace here
    the first node's schedule needs 9.3 kWh, the bound says 5.3, the whole search 5.3)."""
    p = one_way_problem(160, 560)
    solver = OneWay(time_limit_s=60.0, node_limit=1)
    x = solver(p, capacity_program(p, 0.0))
    lp = min_capacity_kwh(p)
    assert x is not None and lp is not None
    found = (x[-2] - x[-1]) / 3.6e6
    assert lp - 1e-6 <= solver.dual_kwh <= found + 1e-6
    if "successfully" not in solver.status:  # stopped short, as HiGHS 1.x (scipy 1.18) does
        assert solver.dual_kwh < found - 1.0


@pytest.mark.parametrize(
    ("samples", "dt_s"),
    [(758, 0.1), (523, 0.1), (51, 0.1), (300, 0.02), (400, 0.15), (600, 0.3), (100, 0.061)],
)
def test_the_band_as_a_matrix_is_welchs_band_energy(samples: int, dt_s: float):
    """A convex solver holds a schedule to the band through `band_operator`: ‖M·x‖² is
    `band_energy(x)` for any x: several segments and one, even and odd segments (scipy's
    overlap is half an odd one, rounded down), Nyquist under 20 Hz or over it, and a rate
    whose frequencies round (0.061 s: Nyquist one ulp over 1/(2·dt)); the shipped trace's
    load and a grid that steps and ramps among them."""
    m = band_operator(samples, dt_s)
    load = read_trace(TRAINING).site_load_w(10_000, 2e6)[:samples]
    steps = np.repeat([3e6, 8e6, 5e6], -(-samples // 3))[:samples]
    ramp = 3e6 + 5e5 * dt_s * np.arange(samples)
    noise = np.random.default_rng(samples).normal(0.0, 1e5, samples)
    for x in (load, steps, ramp, noise):
        assert np.sum((m @ x) ** 2) == pytest.approx(band_energy(x, dt_s), rel=1e-9)
    assert np.sum((m @ np.full(samples, 7e6)) ** 2) == pytest.approx(0.0, abs=1e-6)  # flat


@pytest.mark.parametrize("dt_s", [0.1, 0.1 * (1 + 2e-14), 0.1 * (1 - 2e-14)])
def test_a_bin_on_the_bands_edge_is_placed_by_the_rule_not_by_rounding(dt_s: float):
    """40 s segments put a bin on 0.1 Hz, where the training trace's checkpoint cycle sits: it
    belongs below the band whatever the time step's last bits (the shipped trace's is
    0.10000000000000142 s, a recorder's 0.1 s), and bands that meet share no bin."""
    tr = read_trace(TRAINING)
    load = tr.site_load_w(10_000, 2e6)
    run = simulate(load, tr.dt_s, ReplaySettings())
    grid = run.out[:, core.O_GRID]
    assert band_attenuation_db(load, grid, dt_s) == pytest.approx(
        band_attenuation_db(load, grid, tr.dt_s), abs=1e-9
    )
    below, above = band_energy(load, dt_s, (0.05, 0.1)), band_energy(load, dt_s, (0.1, 5.0))
    assert below + above == pytest.approx(band_energy(load, dt_s, (0.05, 5.0)), rel=1e-12)
    assert below > 0.0  # the 0.1 Hz bin is counted there, under the band


def test_a_record_shorter_than_a_segment_has_no_band_as_a_matrix_either():
    with pytest.warns(UserWarning, match="nperseg"):  # scipy's: a segment longer than it
        assert band_energy(np.ones(1), 0.1) == 0.0
    assert band_operator(1, 0.1).shape == (0, 1)


def test_size_finds_a_battery_that_holds_and_the_lp_needs_no_more():
    tr = read_trace(TRAINING)
    s = ReplaySettings()
    load = tr.site_load_w(s.gpus, s.base_w)
    sized = size(load, tr.dt_s, s)
    check = s.model_copy(
        update={"battery_w": sized.online_battery_w, "battery_wh": sized.online_battery_wh}
    )
    assert simulate(load, tr.dt_s, check).figures.unserved_kwh == 0.0
    smaller = s.model_copy(
        update={"battery_w": sized.online_battery_w * 0.8, "battery_wh": sized.online_battery_wh}
    )
    assert simulate(load, tr.dt_s, smaller).figures.unserved_kwh > 0.0
    assert sized.lp_battery_w is not None and sized.lp_battery_w <= sized.online_battery_w
    assert sized.lp_swing_kwh is not None and sized.lp_swing_kwh <= sized.online_swing_kwh
    assert sized.lp_realizable_swing_kwh is not None
    assert sized.lp_swing_kwh <= sized.lp_realizable_swing_kwh * (1 + 1e-6)


def test_bound_is_skipped_with_a_reason_on_long_traces(monkeypatch: pytest.MonkeyPatch):
    import controller.replay.run as replay_run

    monkeypatch.setattr(replay_run, "BOUND_MAX_STEPS", 100)
    s = ReplaySettings()
    load = _random_trace(1, n=300)
    result = report(simulate(load, 0.1, s), 0.1, s, with_bound=True)
    assert result["lp_throughput_kwh"] is None and result["throughput_ratio"] is None
    assert result["bound"].startswith("skipped: 300 steps is over 100")


def test_replay_from_a_later_time(tmp_path: Path):
    tr = read_trace(TRAINING)
    later = tr.starting_at(13.6)
    assert later.t_s[0] >= 13.6 and len(later.t_s) < len(tr.t_s)
    with pytest.raises(TraceError, match="fewer than two rows at or after 100"):
        tr.starting_at(100.0)
    out = subprocess.run(
        [*GRIDPILOT, "replay", str(TRAINING), "--from-s", "13.6", "--json", "--no-bound"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["steps"] == len(later.t_s)
