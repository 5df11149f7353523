"""The dispatch core: each behaviour on its own, then properties over random inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import DispatchConfig
from controller.dispatch import (
    AssetState,
    Bank,
    DispatchInputs,
    core,
    dispatch,
    initial_state,
    params_vector,
)
from drivers.sim.load import TraceLoad

DT = 0.1
RAMP = 5e5
CAPACITY_J = 10e6 * 3600  # 10 MWh
# The energy return off: each test turns on what it is about.
CFG = DispatchConfig(
    lowpass_tau_s=5.0, ramp_up_w_per_s=RAMP, ramp_down_w_per_s=RAMP, energy_return_s=0.0
)


def bank(energy_ratio: float = 0.6, power_w: float = 20e6, floor_j: float = 0.0) -> Bank:
    return Bank(CAPACITY_J, energy_ratio * CAPACITY_J, floor_j, power_w, power_w)


def run(load, cfg=CFG, b=None, frequency=None, cap=None, energy_ratio=0.6):
    """Simulate the core over `load`; returns the output rows."""
    b = b or bank(energy_ratio)
    load = np.asarray(load, dtype=float)
    n = len(load)
    freq = np.full(n, 50.0) if frequency is None else np.asarray(frequency, dtype=float)
    caps = np.full(n, np.inf) if cap is None else np.asarray(cap, dtype=float)
    out = core.outputs(n)
    core.simulate(initial_state(b.energy_j), params_vector(cfg, b), load, freq, caps, DT, out)
    return out


def site_trace(seconds: float = 120.0) -> np.ndarray:
    load = TraceLoad("h200_train_1p7b", gpus=10_000, base_w=2e6)
    return np.array([load.it_power_w(t) for t in np.arange(0.0, seconds, DT)])


def test_first_step_starts_from_the_load_without_a_jump():
    out = run([6e6])
    assert out[0, core.O_GRID] == 6e6 and out[0, core.O_BATTERY] == 0.0


def test_step_is_pure_and_agrees_with_simulate():
    b = bank()
    params = params_vector(CFG, b)
    state = initial_state(b.energy_j)
    before = state.copy()
    load = site_trace(20.0)
    out = run(load)
    s = state
    for i, w in enumerate(load):
        s, o = core.step(s, params, np.array([w, 50.0, np.inf, np.nan]), DT)
        assert o[core.O_GRID] == out[i, core.O_GRID]
    assert np.array_equal(state, before)


def test_load_step_is_ramped_and_the_battery_covers_it():
    out = run([3e6] * 10 + [10e6] * 100)
    grid = out[:, core.O_GRID]
    assert np.all(np.abs(np.diff(grid)) <= RAMP * DT * (1 + 1e-12))
    np.testing.assert_allclose(grid + out[:, core.O_BATTERY], [3e6] * 10 + [10e6] * 100)
    assert out[10, core.O_BATTERY] == pytest.approx(7e6 - RAMP * DT, rel=0.01)
    assert grid[-1] > 6e6  # and it does follow the load


def test_ramp_limit_holds_over_the_real_training_trace():
    load = site_trace()
    assert np.max(np.abs(np.diff(load))) > 5e6
    out = run(load)
    assert np.max(np.abs(np.diff(out[:, core.O_GRID]))) <= RAMP * DT * (1 + 1e-12)
    assert not out[:, core.O_UNSERVED].any()


def test_moving_average_over_the_period_removes_a_periodic_swing():
    period = 10  # samples: 1 s at 10 Hz
    square = np.tile([10e6] * 6 + [3e6] * 4, 60)  # mean 7.2 MW
    plain = run(square)
    tuned = run(square, cfg=CFG.model_copy(update={"average_window_s": period * DT}))
    late = slice(400, None)  # settled but for the low-pass's last creep
    # No ripple left: every harmonic of the swing sits on a null of the average.
    assert np.max(np.abs(np.diff(tuned[late, core.O_GRID]))) < 100.0
    assert np.max(np.abs(np.diff(plain[late, core.O_GRID]))) > 1e4
    assert tuned[-1, core.O_GRID] == pytest.approx(7.2e6, rel=1e-3)


def test_energy_return_keeps_the_stored_energy_swing_small():
    """After the load's mean steps up, the plain filter lets the battery run down for as long as
    the low-pass lags; the energy return makes the grid replace what the battery gave."""
    load = [3e6] * 50 + [7e6] * 1200
    plain = run(load)
    pulled = run(load, cfg=CFG.model_copy(update={"energy_return_s": 20.0}))

    def swing(out):
        return np.ptp(out[:, core.O_ENERGY])

    assert swing(pulled) < 0.8 * swing(plain)  # 16.5 MJ against 21.9 MJ here
    assert np.max(np.abs(np.diff(pulled[:, core.O_GRID]))) <= RAMP * DT * (1 + 1e-12)
    # Having given energy, the battery takes it back: the grid overshoots the load for a while.
    assert np.max(pulled[:, core.O_GRID]) > 7e6 >= np.max(plain[:, core.O_GRID]) - 1.0


def test_energy_return_replaces_the_round_trip_losses_cycle_after_cycle():
    """A training rhythm (7 s of compute, 3 s of checkpoint) cycles the battery; each cycle
    loses 8 % of what went through it. Against its own slow average the grid replaces that
    loss, so the stored energy does not creep down cycle after cycle (against a one-minute
    average it did: 0.2 kWh a cycle here)."""
    load = np.tile([8e6] * 70 + [3e6] * 30, 60)  # 10 min
    cfg = CFG.model_copy(update={"energy_return_s": 20.0})
    out = run(load, cfg=cfg)
    ends = out[99::100, core.O_ENERGY]  # the stored energy at each cycle's end
    creep = (ends[-1] - ends[10]) / (len(ends) - 11)  # J a cycle, once the filters settled
    follows = run(load, cfg=cfg.model_copy(update={"energy_anchor_s": 60.0}))
    old = follows[99::100, core.O_ENERGY]
    assert abs(creep) < 0.1 * abs((old[-1] - old[10]) / (len(old) - 11))
    assert np.ptp(out[1000:, core.O_ENERGY]) < 0.5 * np.ptp(follows[1000:, core.O_ENERGY])


def test_outside_its_band_the_energy_return_never_holds_the_battery_there():
    """Below its SoC band the battery recharges at the SoC return's pace, energy return on or
    off: the return's average is never further out than the energy, so it does not pull back
    (an hour-long average left where the battery started would hold it there)."""
    load = [5e6] * 3000
    off = run(load, energy_ratio=0.3)
    on = run(load, cfg=CFG.model_copy(update={"energy_return_s": 20.0}), energy_ratio=0.3)
    np.testing.assert_array_equal(on[:, core.O_ENERGY], off[:, core.O_ENERGY])
    assert on[-1, core.O_ENERGY] > on[0, core.O_ENERGY]


def test_soc_above_its_band_drifts_back_within_the_ramp():
    cfg = CFG.model_copy(update={"soc_return_s": 60.0})
    out = run([5e6] * 3000, cfg=cfg, energy_ratio=0.9)
    energy = out[:, core.O_ENERGY] / CAPACITY_J
    assert energy[-1] < 0.75 and energy[-1] >= cfg.soc_target_high_ratio - 0.01
    assert np.all(np.diff(energy) <= 1e-12)  # discharging all the way back
    assert np.max(np.abs(np.diff(out[:, core.O_GRID]))) <= RAMP * DT * (1 + 1e-12)


def test_soc_below_its_band_recharges_from_the_grid():
    out = run([5e6] * 3000, energy_ratio=0.3)
    assert out[-1, core.O_ENERGY] / CAPACITY_J > 0.3
    assert out[-1, core.O_GRID] > 5e6  # the grid carries the load and the recharge


def test_reserve_is_never_spent_and_the_shortfall_is_reported():
    floor = 0.4 * CAPACITY_J
    b = bank(0.4 + 1e-6, floor_j=floor)  # 36 kJ above the reserve
    out = run([3e6] * 5 + [10e6] * 50, b=b)
    assert np.all(out[:, core.O_ENERGY] >= floor - 1e-6)
    jump = out[5]
    assert jump[core.O_SHED] > 5e6 and jump[core.O_SHED] == jump[core.O_UNSERVED]
    # The ramp limiter then goes on from where the grid really is: no endless shed request.
    assert out[6, core.O_SHED] < jump[core.O_SHED]


def test_power_limit_binds_and_is_reported():
    out = run([3e6] * 5 + [10e6] * 20, b=bank(power_w=2e6))
    assert np.max(out[:, core.O_BATTERY]) == pytest.approx(2e6)
    i = 5
    expected = (10e6 - out[i - 1, core.O_GRID] - RAMP * DT) - 2e6
    assert out[i, core.O_UNSERVED] == pytest.approx(expected, rel=1e-6)
    assert out[i, core.O_SHED] == pytest.approx(expected, rel=1e-6)


def test_full_battery_cannot_absorb_and_the_grid_drops_faster():
    out = run([10e6] * 5 + [3e6] * 20, energy_ratio=CFG.soc_max_ratio)
    assert np.all(out[:, core.O_ENERGY] <= CFG.soc_max_ratio * CAPACITY_J * (1 + 1e-12))
    assert out[5, core.O_BATTERY] > -1e6  # almost no room to charge
    assert out[5, core.O_UNSERVED] > 5e6 and out[5, core.O_SHED] == 0.0  # shedding won't help


@pytest.mark.parametrize(
    ("hz", "expected_w"),
    [
        (50.0, 0.0),
        (49.99, 0.0),  # inside the 15 mHz deadband
        (49.8, (0.2 - 0.015) / 50 / 0.05 * 1e6),  # under-frequency: draw less
        (50.3, -(0.3 - 0.015) / 50 / 0.05 * 1e6),  # over-frequency: draw more
        (47.0, 1e6),  # beyond full response
    ],
)
def test_droop_response_acts_in_the_same_step(hz: float, expected_w: float):
    out = run([6e6] * 50 + [6e6], frequency=[50.0] * 50 + [hz])
    assert out[-1, core.O_RESPONSE] == pytest.approx(expected_w)
    # Outside the ramp limiter: the whole response shows on the grid in this very step.
    assert out[-1, core.O_GRID] == pytest.approx(out[-2, core.O_GRID] - expected_w)
    assert out[-1, core.O_BATTERY] == pytest.approx(6e6 - out[-1, core.O_GRID])


def test_unknown_frequency_gives_no_response():
    out = run([6e6] * 3, frequency=[50.0, math.nan, 50.0])
    assert out[1, core.O_RESPONSE] == 0.0


def test_a_lower_cap_is_approached_at_the_ramp_rate_and_then_held():
    n = 200
    cap = [math.inf] * 50 + [6e6] * (n - 50)
    out = run([8e6] * n, cap=cap)
    grid = out[:, core.O_GRID]
    assert grid[49] == pytest.approx(8e6)
    assert np.all(np.abs(np.diff(grid)) <= RAMP * DT * (1 + 1e-12))
    assert grid[50 + 38] > 6e6  # 2 MW at 0.5 MW/s takes 4 s: 40 steps
    assert np.all(grid[50 + 39 :] <= 6e6 + 1e-6)
    assert out[-1, core.O_BATTERY] == pytest.approx(2e6)


def test_a_cap_the_battery_cannot_cover_raises_a_shed_request():
    out = run([8e6] * 200, cap=[math.inf] * 50 + [6e6] * 150, b=bank(power_w=1e6))
    assert out[-1, core.O_BATTERY] == pytest.approx(1e6)
    assert out[-1, core.O_SHED] == pytest.approx(1e6)
    assert out[-1, core.O_GRID] == pytest.approx(7e6)


def test_allocation_is_proportional_to_headroom_then_to_spare_power():
    out, rest = core.allocate(
        3e6, np.array([4e6, 2e6, 0.0]), np.zeros(3), np.array([4e6, 2e6, 0.0])
    )
    np.testing.assert_allclose(out, [2e6, 1e6, 0.0])
    assert rest == 0.0
    # An asset low on energy gets a small share first, then what it can still give.
    out, rest = core.allocate(5e6, np.array([4e6, 4e6]), np.zeros(2), np.array([4e6, 1e6]))
    np.testing.assert_allclose(out, [4e6, 1e6])
    out, rest = core.allocate(7e6, np.array([4e6, 4e6]), np.zeros(2), np.array([4e6, 1e6]))
    np.testing.assert_allclose(out, [4e6, 3e6])
    out, rest = core.allocate(-3e6, np.zeros(2), np.array([1e6, 5e6]), np.array([1e6, 2e6]))
    np.testing.assert_allclose(out, [-1e6, -2e6])
    out, rest = core.allocate(10e6, np.array([4e6, 2e6]), np.zeros(2), np.array([4e6, 2e6]))
    np.testing.assert_allclose(out, [4e6, 2e6])
    assert rest == pytest.approx(4e6)


def test_split_gives_the_swing_to_instant_assets_and_the_slow_part_to_the_rest():
    dis = np.array([7e6, 7e6, 4e6])
    chg = np.array([5e6, 5e6, 4e6])
    instant = np.array([True, True, False])
    # A swing to 3 MW of charging while the slow part still discharges 1 MW.
    out, rest = core.allocate_split(-3e6, 1e6, dis, chg, dis, instant)
    assert rest == 0.0 and out.sum() == pytest.approx(-3e6)
    assert out[2] > 0  # the BESS keeps following the slow part
    assert out[0] == pytest.approx(out[1]) and out[0] < -1.5e6  # the UPS modules take the swing
    # When the instant assets run out of room, the others help.
    out, rest = core.allocate_split(15e6, 1e6, dis, chg, dis, instant)
    np.testing.assert_allclose(out, [7e6, 7e6, 1e6])
    assert rest == 0.0
    out, rest = core.allocate_split(20e6, 1e6, dis, chg, dis, instant)
    np.testing.assert_allclose(out, [7e6, 7e6, 4e6])
    assert rest == pytest.approx(2e6)


def test_bess_setpoint_moves_slowly_while_the_ups_modules_take_the_swings():
    assets = (
        AssetState("ups-a", 0.6 * 5.4e9, 5.4e9, 2.2e9, 7e6, 5e6, instant=True),
        AssetState("ups-b", 0.6 * 5.4e9, 5.4e9, 2.2e9, 7e6, 5e6, instant=True),
        AssetState("bess-1", 0.6 * 28.8e9, 28.8e9, 0.2 * 28.8e9, 4e6, 4e6),
    )
    state = initial_state()
    bess, ups = [], []
    for load in site_trace(30.0):
        state, result = dispatch(DispatchInputs(load, 50.0, assets), CFG, state, DT)
        bess.append(result.asset_w["bess-1"])
        ups.append(result.asset_w["ups-a"])
    assert np.max(np.abs(np.diff(bess))) < 0.1 * np.max(np.abs(np.diff(ups)))


def test_dispatch_splits_over_unequal_assets_within_each_ones_limits():
    assets = (
        AssetState("ups-a", 0.6 * 5.4e9, 5.4e9, 2.2e9, 7e6, 5e6),
        AssetState("ups-b", 0.45 * 5.4e9, 5.4e9, 2.2e9, 7e6, 5e6),  # less energy above reserve
        AssetState("bess-1", 0.6 * 28.8e9, 28.8e9, 0.2 * 28.8e9, 4e6, 4e6),
    )
    state, _ = dispatch(DispatchInputs(3e6, 50.0, assets), CFG, initial_state(), DT)
    state, result = dispatch(DispatchInputs(10e6, 50.0, assets), CFG, state, DT)
    w = result.asset_w
    assert sum(w.values()) == pytest.approx(result.battery_w)
    assert result.grid_target_w + result.battery_w == pytest.approx(10e6)
    assert w["ups-b"] < w["ups-a"]  # less energy, smaller share
    assert all(w[a.id] <= a.discharge_max_w + 1e-6 for a in assets)
    assert result.unserved_w == 0.0


# --- properties -----------------------------------------------------------------------

loads = st.lists(st.floats(0.0, 2e7), min_size=2, max_size=120)


@st.composite
def scenarios(draw):
    load = draw(loads)
    n = len(load)
    freq = draw(st.lists(st.floats(49.0, 51.0), min_size=n, max_size=n))
    cap = draw(st.lists(st.one_of(st.just(math.inf), st.floats(1e6, 2e7)), min_size=n, max_size=n))
    energy = draw(st.floats(CFG.soc_min_ratio, CFG.soc_max_ratio))
    power = draw(st.floats(1e5, 2e7))
    tuning = {
        "average_window_s": draw(st.sampled_from([0.0, 0.3, 1.0])),
        "energy_return_s": draw(st.sampled_from([0.0, 5.0, 20.0])),
    }
    return np.array(load), np.array(freq), np.array(cap), energy, power, tuning


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_numba_and_reference_agree(scenario):
    load, freq, cap, energy, power, tuning = scenario
    b = bank(energy, power)
    params = params_vector(CFG.model_copy(update=tuning), b)
    args = (initial_state(b.energy_j), params, load, freq, cap, DT)
    fast, slow = core.outputs(len(load)), core.outputs(len(load))
    end_fast = core.simulate(*args, fast)
    end_slow = core.simulate_reference(*args, slow)
    np.testing.assert_allclose(end_fast, end_slow, rtol=1e-9)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_soc_stays_within_its_limits_and_energy_balances(scenario):
    load, freq, cap, energy, power, tuning = scenario
    b = bank(energy, power)
    cfg = CFG.model_copy(update=tuning)
    out = run(load, cfg=cfg, b=b, frequency=freq, cap=cap)
    e = np.r_[b.energy_j, out[:, core.O_ENERGY]]
    assert np.all(e >= CFG.soc_min_ratio * CAPACITY_J * (1 - 1e-9))
    assert np.all(e <= CFG.soc_max_ratio * CAPACITY_J * (1 + 1e-9))
    battery = out[:, core.O_BATTERY]
    np.testing.assert_allclose(out[:, core.O_GRID] + battery, load, rtol=1e-6, atol=1e-3)
    eta_c, eta_d = CFG.charge_efficiency, CFG.discharge_efficiency
    expected = np.where(battery >= 0, -battery * DT / eta_d, -battery * DT * eta_c)
    np.testing.assert_allclose(np.diff(e), expected, rtol=1e-6, atol=1e-3)


@settings(max_examples=100, deadline=None)
@given(loads, st.floats(1e5, 2e7), st.sampled_from([0.0, 5.0]), st.sampled_from([0.0, 1.0]))
def test_ramp_holds_whenever_the_battery_is_within_its_limits(load, power, pull, window):
    cfg = CFG.model_copy(update={"energy_return_s": pull, "average_window_s": window})
    out = run(load, cfg=cfg, b=bank(0.6, power))
    grid = out[:, core.O_GRID]
    served = out[:, core.O_UNSERVED] == 0.0
    for i in range(1, len(grid)):
        if served[i] and served[i - 1]:
            assert abs(grid[i] - grid[i - 1]) <= RAMP * DT * (1 + 1e-9) + 1e-6
