"""The dispatch core: pure, numba-compiled. Numbers and arrays in, numbers and arrays out.

No I/O, no clock, no globals: the live loop calls `step` once a tick, a replay calls
`simulate` over a whole trace, and both run the same compiled `_advance`.

State vector (float64[STATE_SIZE]):  [lowpass_w, grid_w, initialised]
Parameter vector (float64[PARAM_SIZE]): [lowpass_tau_s, ramp_up_w_per_s, ramp_down_w_per_s]
"""

from __future__ import annotations

import numpy as np
from numba import njit

STATE_SIZE = 3
S_LOWPASS, S_GRID, S_INIT = 0, 1, 2
PARAM_SIZE = 3
P_TAU, P_RAMP_UP, P_RAMP_DOWN = 0, 1, 2


@njit(cache=True)
def _advance(state, params, site_load_w, dt_s):
    """One step in place; returns (grid_target_w, battery_w). Battery positive = discharge."""
    if state[S_INIT] == 0.0:
        state[S_LOWPASS] = site_load_w
        state[S_GRID] = site_load_w
        state[S_INIT] = 1.0
    alpha = dt_s / (params[P_TAU] + dt_s)
    state[S_LOWPASS] += alpha * (site_load_w - state[S_LOWPASS])
    delta = state[S_LOWPASS] - state[S_GRID]
    up = params[P_RAMP_UP] * dt_s
    down = params[P_RAMP_DOWN] * dt_s
    if delta > up:
        delta = up
    elif delta < -down:
        delta = -down
    state[S_GRID] += delta
    return state[S_GRID], site_load_w - state[S_GRID]


@njit(cache=True)
def step(state, params, site_load_w, dt_s):
    """One tick: (new_state, grid_target_w, battery_w); the input state is left untouched."""
    new_state = state.copy()
    grid_w, battery_w = _advance(new_state, params, site_load_w, dt_s)
    return new_state, grid_w, battery_w


@njit(cache=True)
def simulate(state, params, site_load_w, dt_s):
    """A whole trace (uniform dt_s): (final_state, grid_w[], battery_w[])."""
    s = state.copy()
    n = site_load_w.shape[0]
    grid = np.empty(n)
    battery = np.empty(n)
    for i in range(n):
        grid[i], battery[i] = _advance(s, params, site_load_w[i], dt_s)
    return s, grid, battery


@njit(cache=True)
def allocate(battery_w, max_discharge_w, max_charge_w):
    """Split battery power over assets in proportion to what each can give (or take).

    Returns (per-asset power W, unserved W): the part no asset could carry.
    """
    n = max_discharge_w.shape[0]
    out = np.zeros(n)
    caps = max_discharge_w if battery_w >= 0.0 else max_charge_w
    total = 0.0
    for i in range(n):
        total += max(caps[i], 0.0)
    if total <= 0.0:
        return out, abs(battery_w)
    served = min(abs(battery_w), total)
    sign = 1.0 if battery_w >= 0.0 else -1.0
    for i in range(n):
        out[i] = sign * served * max(caps[i], 0.0) / total
    return out, abs(battery_w) - served
