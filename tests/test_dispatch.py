"""The skeleton's dispatch core: a low-pass and a ramp limiter, pure and compiled."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import DispatchConfig
from controller.dispatch import (
    AssetLimits,
    DispatchInputs,
    core,
    dispatch,
    initial_state,
    params_vector,
)
from drivers.sim.load import TraceLoad

RAMP = 5e5
PARAMS = params_vector(
    DispatchConfig(lowpass_tau_s=10.0, ramp_up_w_per_s=RAMP, ramp_down_w_per_s=RAMP)
)


def site_trace(seconds: float = 120.0, dt: float = 0.1) -> np.ndarray:
    load = TraceLoad("h200_train_1p7b", gpus=10_000, base_w=2e6)
    return np.array([load.it_power_w(t) for t in np.arange(0.0, seconds, dt)])


def test_first_step_starts_from_the_load_without_a_jump():
    _, grid, battery = core.step(initial_state(), PARAMS, 6e6, 0.1)
    assert grid == 6e6 and battery == 0.0


def test_step_is_pure():
    state = initial_state()
    before = state.copy()
    core.step(state, PARAMS, 6e6, 0.1)
    assert np.array_equal(state, before)


def test_load_step_is_ramped_and_the_battery_covers_it():
    state, *_ = core.step(initial_state(), PARAMS, 3e6, 0.1)
    grids = []
    for _ in range(50):
        state, grid, battery = core.step(state, PARAMS, 10e6, 0.1)
        assert grid + battery == pytest.approx(10e6)
        grids.append(grid)
    steps = np.diff([3e6, *grids])
    assert np.all(steps <= RAMP * 0.1 + 1e-6)
    assert grids[-1] > 3e6  # and it does move toward the new load


def test_ramp_limit_holds_over_the_real_training_trace():
    load = site_trace()
    assert np.max(np.abs(np.diff(load))) > 5e6  # the trace really swings by megawatts
    _, grid, battery = core.simulate(initial_state(), PARAMS, load, 0.1)
    assert np.max(np.abs(np.diff(grid))) <= RAMP * 0.1 * (1 + 1e-12)
    np.testing.assert_allclose(grid + battery, load, rtol=1e-12)


def test_simulate_and_step_agree():
    load = site_trace(30.0)
    _, grid, _ = core.simulate(initial_state(), PARAMS, load, 0.1)
    state = initial_state()
    for i, w in enumerate(load):
        state, g, _ = core.step(state, PARAMS, w, 0.1)
        assert g == grid[i]


def test_allocation_is_proportional_to_available_power():
    out, unserved = core.allocate(3e6, np.array([4e6, 2e6, 0.0]), np.array([1e6, 1e6, 1e6]))
    np.testing.assert_allclose(out, [2e6, 1e6, 0.0])
    assert unserved == 0.0
    out, unserved = core.allocate(-1.5e6, np.array([4e6, 2e6, 0.0]), np.array([1e6, 2e6, 0.0]))
    np.testing.assert_allclose(out, [-0.5e6, -1e6, 0.0])


def test_allocation_reports_what_no_asset_can_carry():
    out, unserved = core.allocate(10e6, np.array([4e6, 2e6]), np.array([1e6, 1e6]))
    np.testing.assert_allclose(out, [4e6, 2e6])
    assert unserved == pytest.approx(4e6)
    out, unserved = core.allocate(5e5, np.array([0.0, 0.0]), np.array([1e6, 1e6]))
    assert unserved == 5e5 and not out.any()


@settings(max_examples=200)
@given(
    battery=st.floats(-2e7, 2e7),
    dis=st.lists(st.floats(0, 1e7), min_size=1, max_size=6),
    data=st.data(),
)
def test_allocation_respects_every_limit(battery, dis, data):
    chg = data.draw(st.lists(st.floats(0, 1e7), min_size=len(dis), max_size=len(dis)))
    out, unserved = core.allocate(battery, np.array(dis), np.array(chg))
    assert np.all(out <= np.array(dis) * (1 + 1e-9) + 1e-6)
    assert np.all(out >= -np.array(chg) * (1 + 1e-9) - 1e-6)
    assert out.sum() + np.sign(battery) * unserved == pytest.approx(battery, abs=1e-3)


def test_dispatch_puts_unserved_power_on_the_grid_target():
    state, _ = dispatch(
        DispatchInputs(3e6, (AssetLimits("ups-a", 1e6, 1e6),)), PARAMS, initial_state(), 0.1
    )
    state, result = dispatch(
        DispatchInputs(10e6, (AssetLimits("ups-a", 1e6, 1e6),)), PARAMS, state, 0.1
    )
    assert result.asset_w == {"ups-a": pytest.approx(1e6)}
    assert result.unserved_w > 5e6
    assert result.grid_target_w + result.asset_w["ups-a"] == pytest.approx(10e6)
