"""The dispatch core: pure, numba-compiled. Numbers and arrays in, numbers and arrays out.

No I/O, no clock, no globals: the live loop calls `step` once a tick, a replay calls
`simulate` over a whole trace, and both run the same compiled `_advance`. Its plain-Python
twin (`_advance.py_func`, the same source run by CPython) is the reference the tests and the
benchmark compare against; `_advance` therefore calls no other compiled function.

Signs: battery power positive = discharge (into the site); grid power positive = import;
frequency response positive = the site gives power back (draws less).

Vectors (float64), indexed by the constants below:
  params  P_*: filter, ramp, battery limits (W, J), efficiencies, SoC band, droop
  state   S_*: low-pass, ramp-limited grid plan, stored energy, initialised flag, cap in force,
          the moving average's ring buffer
  inputs  per step: site load W, grid frequency Hz, import cap W (inf: none),
          measured stored energy J (nan: integrate our own), the planner's feed-forward W
          (0: none; see `planner`)
  outputs O_*: grid, battery, unserved, shed request, frequency response, stored energy,
          grid target before the battery's limits, the battery power's slow part
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

P_TAU_S = 0
P_RAMP_UP = 1
P_RAMP_DOWN = 2
P_DISCHARGE_MAX_W = 3
P_CHARGE_MAX_W = 4
P_ENERGY_FLOOR_J = 5  # never discharged below: SoC min or the ride-through reserve
P_ENERGY_CEILING_J = 6  # never charged above: SoC max
P_BAND_LOW_J = 7  # the SoC band the battery drifts back into
P_BAND_HIGH_J = 8
P_SOC_RETURN_PER_S = 9  # W of bias per J outside the band (1 / return time)
P_ETA_CHARGE = 10
P_ETA_DISCHARGE = 11
P_NOMINAL_HZ = 12
P_DROOP = 13  # per unit: 0.05 = full response at a 5 % frequency deviation
P_DEADBAND_HZ = 14
P_RESPONSE_W = 15  # power at full frequency response
P_WINDOW_S = 16  # moving average before the low-pass (0: none), e.g. one workload period
P_ENERGY_RETURN_S = 17  # the grid replaces what the battery gave over this time (0: off)
P_ENERGY_ANCHOR_S = 18  # ... measured against its energy's average over this time
P_SPLIT_TAU_S = 19  # battery power's slow part (all assets) vs fast part (instant assets)
PARAM_SIZE = 20

S_LOWPASS = 0
S_GRID = 1
S_ENERGY = 2
S_INIT = 3
S_CAP = 4  # the import cap in force: a lower cap is approached at the ramp rate
S_ANCHOR = 5  # the stored energy's slow average, for the energy return
S_SLOW = 6  # the battery power's slow part
S_RING_POS = 7  # the moving average's ring buffer: next slot, running sum, length, samples
S_RING_SUM = 8
S_RING_LEN = 9
S_RING = 10
MAX_WINDOW = 2048  # samples: 204 s at 10 Hz, 41 s at 50 Hz
STATE_SIZE = S_RING + MAX_WINDOW

I_LOAD = 0
I_FREQUENCY = 1
I_CAP = 2
I_ENERGY = 3
I_PLAN = 4  # optional: a 4-long input vector means no plan
INPUT_SIZE = 5

O_GRID = 0
O_BATTERY = 1
O_UNSERVED = 2
O_SHED = 3
O_RESPONSE = 4
O_ENERGY = 5
O_TARGET = 6
O_SLOW = 7  # the battery power's slow part, for allocation
OUTPUT_SIZE = 8


# Reciprocals and fused multiply-adds only (a fifth faster): no "no-NaN" or reordering
# assumptions, since the step tests for NaN and must match its Python twin to 1e-9.
@njit(cache=True, fastmath={"arcp", "contract"})
def _advance(state, params, load_w, frequency_hz, cap_w, measured_j, plan_w, dt_s):
    """One step in place on `state`; returns the outputs in O_* order (a tuple, so the
    compiled loop keeps them in registers)."""
    energy = state[S_ENERGY] if math.isnan(measured_j) else measured_j
    if state[S_INIT] == 0.0:
        state[S_LOWPASS] = load_w
        state[S_GRID] = load_w
        state[S_CAP] = cap_w
        state[S_ANCHOR] = energy
        state[S_INIT] = 1.0

    # 1. Smoothing: a moving average over the workload's period (its nulls fall on the period
    #    and every harmonic), then a first-order low-pass.
    averaged = load_w
    length = int(params[P_WINDOW_S] / dt_s + 0.5)
    if length > MAX_WINDOW:
        length = MAX_WINDOW
    if length >= 2:
        if state[S_RING_LEN] != length:  # (re)start full of the present load: no jump
            for k in range(length):
                state[S_RING + k] = load_w
            state[S_RING_SUM] = load_w * length
            state[S_RING_POS] = 0.0
            state[S_RING_LEN] = length
        pos = int(state[S_RING_POS])
        state[S_RING_SUM] += load_w - state[S_RING + pos]
        state[S_RING + pos] = load_w
        pos += 1
        if pos == length:  # once a lap, the exact sum: no drift from the running one
            pos = 0
            total = 0.0
            for k in range(length):
                total += state[S_RING + k]
            state[S_RING_SUM] = total
        state[S_RING_POS] = pos
        averaged = state[S_RING_SUM] / length
    alpha = dt_s / (params[P_TAU_S] + dt_s)
    state[S_LOWPASS] += alpha * (averaged - state[S_LOWPASS])
    target = state[S_LOWPASS]

    # 2. State of charge: outside its band the battery drifts back; the bias goes through
    #    the ramp limiter like everything else, so it never breaks the ramp.
    if energy > params[P_BAND_HIGH_J]:
        target -= params[P_SOC_RETURN_PER_S] * (energy - params[P_BAND_HIGH_J])
    elif energy < params[P_BAND_LOW_J]:
        target -= params[P_SOC_RETURN_PER_S] * (energy - params[P_BAND_LOW_J])

    #    An optional faster pull, in the band too: the grid gives back, over energy_return_s,
    #    the energy the battery has moved away from its own slow average. This keeps the
    #    swing of stored energy small when the load's mean steps, and replaces what the round
    #    trip loses each cycle (a fast average would follow that drift down). Outside the band
    #    the average is never further out than the energy, so this pull never holds the
    #    battery out of its band: it pulls towards it, or not at all.
    state[S_ANCHOR] += dt_s / (params[P_ENERGY_ANCHOR_S] + dt_s) * (energy - state[S_ANCHOR])
    below = energy < params[P_BAND_LOW_J] and state[S_ANCHOR] < energy
    above = energy > params[P_BAND_HIGH_J] and state[S_ANCHOR] > energy
    if below or above:
        state[S_ANCHOR] = energy
    if params[P_ENERGY_RETURN_S] > 0.0:
        target -= (energy - state[S_ANCHOR]) / params[P_ENERGY_RETURN_S]

    #    The planner's feed-forward (what it foresees that the filter cannot yet see): added
    #    before the cap and the ramp limiter, so no plan can break either; 0 adds nothing.
    target += plan_w

    # 5. Import cap: a higher cap (or none) holds at once; a lower one is approached from the
    #    grid's present plan at the ramp rate, and from then on it is a hard limit.
    up = params[P_RAMP_UP] * dt_s
    down = params[P_RAMP_DOWN] * dt_s
    cap_in_force = cap_w
    if cap_w < state[S_CAP]:
        approach = min(state[S_CAP], state[S_GRID]) - down
        if approach > cap_w:
            cap_in_force = approach
    state[S_CAP] = cap_in_force
    if target > cap_in_force:
        target = cap_in_force

    # Ramp limiter.
    delta = target - state[S_GRID]
    if delta > up:
        delta = up
    elif delta < -down:
        delta = -down
    plan = state[S_GRID] + delta

    # 4. Frequency response: droop with a deadband, outside the ramp limiter, in this step.
    deviation = frequency_hz - params[P_NOMINAL_HZ]
    response = 0.0
    if math.isfinite(deviation) and abs(deviation) > params[P_DEADBAND_HZ]:
        beyond = abs(deviation) - params[P_DEADBAND_HZ]
        share = beyond / params[P_NOMINAL_HZ] / params[P_DROOP]
        if share > 1.0:
            share = 1.0
        response = share * params[P_RESPONSE_W]
        if deviation > 0.0:
            response = -response  # over-frequency: draw more
    grid_target = plan - response

    # 3. Limits: power, and energy between the floor (reserve) and the ceiling.
    want = load_w - grid_target
    discharge_max = params[P_DISCHARGE_MAX_W]
    room_down = (energy - params[P_ENERGY_FLOOR_J]) * params[P_ETA_DISCHARGE] / dt_s
    if room_down < discharge_max:
        discharge_max = room_down if room_down > 0.0 else 0.0
    charge_max = params[P_CHARGE_MAX_W]
    room_up = (params[P_ENERGY_CEILING_J] - energy) / params[P_ETA_CHARGE] / dt_s
    if room_up < charge_max:
        charge_max = room_up if room_up > 0.0 else 0.0
    battery = want
    if battery > discharge_max:
        battery = discharge_max
    elif battery < -charge_max:
        battery = -charge_max
    grid = load_w - battery
    excess = want - battery  # > 0: the grid takes more than planned; < 0: less

    if battery >= 0.0:
        energy -= battery * dt_s / params[P_ETA_DISCHARGE]
    else:
        energy -= battery * dt_s * params[P_ETA_CHARGE]

    # The battery power's slow part: what assets that follow setpoints with a delay should
    # carry; the rest goes to assets that act at once.
    if params[P_SPLIT_TAU_S] > 0.0:
        state[S_SLOW] += dt_s / (params[P_SPLIT_TAU_S] + dt_s) * (battery - state[S_SLOW])
    else:
        state[S_SLOW] = battery

    # The ramp limiter continues from where the grid really is.
    state[S_GRID] = plan + excess
    state[S_ENERGY] = energy
    over_cap = grid - cap_in_force
    shed = excess if excess > over_cap else over_cap
    unserved = abs(excess) if abs(excess) > over_cap else over_cap
    return (
        grid,
        battery,
        unserved,
        shed if shed > 0.0 else 0.0,
        response,
        energy,
        grid_target,
        state[S_SLOW],
    )


@njit(cache=True)
def step(state, params, inputs, dt_s):
    """One tick: (new_state, outputs); the given state is left untouched."""
    new_state = state.copy()
    plan_w = inputs[I_PLAN] if inputs.shape[0] > I_PLAN else 0.0
    result = _advance(
        new_state,
        params,
        inputs[I_LOAD],
        inputs[I_FREQUENCY],
        inputs[I_CAP],
        inputs[I_ENERGY],
        plan_w,
        dt_s,
    )
    out = np.empty(OUTPUT_SIZE)
    for k in range(OUTPUT_SIZE):
        out[k] = result[k]
    return new_state, out


@njit(cache=True)
def _run(state, params, load_w, frequency_hz, cap_w, plan_w, planned, dt_s, out):
    s = state.copy()
    for i in range(load_w.shape[0]):
        plan = plan_w[i] if planned else 0.0
        r = _advance(s, params, load_w[i], frequency_hz[i], cap_w[i], np.nan, plan, dt_s)
        for k in range(OUTPUT_SIZE):
            out[i, k] = r[k]
    return s


NO_PLAN = np.zeros(0)


@njit(cache=True)
def simulate(state, params, load_w, frequency_hz, cap_w, dt_s, out):
    """A whole trace at a uniform dt_s, energy integrated by the core. Writes one row of
    outputs per step into `out` (shape (steps, OUTPUT_SIZE), the caller's buffer, so a long
    replay can reuse it) and returns the final state; the given state is left untouched."""
    return _run(state, params, load_w, frequency_hz, cap_w, NO_PLAN, False, dt_s, out)


@njit(cache=True)
def simulate_planned(state, params, load_w, frequency_hz, cap_w, plan_w, dt_s, out):
    """`simulate` with the planner's feed-forward, one value per step (W)."""
    return _run(state, params, load_w, frequency_hz, cap_w, plan_w, True, dt_s, out)


def simulate_reference(state, params, load_w, frequency_hz, cap_w, dt_s, out, plan_w=None):
    """`simulate` (or, given plan_w, `simulate_planned`) in plain Python: the same step, run
    by CPython (tests and benchmark only)."""
    s = state.copy()
    advance = _advance.py_func
    for i in range(load_w.shape[0]):
        plan = 0.0 if plan_w is None else plan_w[i]
        out[i] = advance(s, params, load_w[i], frequency_hz[i], cap_w[i], math.nan, plan, dt_s)
    return s


def outputs(steps: int) -> np.ndarray:
    """A buffer for `simulate`."""
    return np.empty((steps, OUTPUT_SIZE))


@njit(cache=True)
def allocate(battery_w, discharge_max_w, charge_max_w, headroom_w):
    """6. Split battery power over assets: in proportion to each one's headroom (what it can
    give or take, power and energy both), then any rest up to each one's power limit.

    discharge_max_w / charge_max_w: each asset's power limits now (W, ≥ 0); headroom_w: the
    power each can sustain for the allocation horizon given its energy (W, ≥ 0, both ways
    folded by the caller). Returns (per-asset W, what no asset could carry W).
    """
    n = discharge_max_w.shape[0]
    out = np.zeros(n)
    limits = np.maximum(discharge_max_w if battery_w >= 0.0 else charge_max_w, 0.0)
    weights = np.minimum(np.maximum(headroom_w, 0.0), limits)
    sign = 1.0 if battery_w >= 0.0 else -1.0
    need = abs(battery_w)
    weight_total = weights.sum()
    first = min(need, weight_total)
    if weight_total > 0.0:
        out += first * weights / weight_total
    rest = need - first
    spare_total = limits.sum() - weight_total
    if rest > 0.0 and spare_total > 0.0:
        second = min(rest, spare_total)
        out += second * (limits - weights) / spare_total
        rest -= second
    for i in range(n):
        out[i] *= sign
    return out, rest


@njit(cache=True)
def allocate_split(battery_w, slow_w, discharge_max_w, charge_max_w, headroom_w, fast):
    """Allocation in two parts: the slow part of the battery power over every asset by
    headroom (`allocate`); the fast rest first over the `fast` assets (those that act at once,
    like a UPS's rectifier cap), then over any asset, within what each has left.

    headroom_w is for the direction of the slow part. Returns (per-asset W, unserved W).
    """
    n = discharge_max_w.shape[0]
    # The two parts may point opposite ways for a moment (a BESS still giving while the UPS
    # modules absorb a swing): that is the point, the slow assets never see the swing.
    shares, _ = allocate(slow_w, discharge_max_w, charge_max_w, headroom_w)
    remaining = battery_w - shares.sum()
    tiny = 1e-9 * abs(battery_w) + 1e-6  # W: rounding, not power
    for only_fast in (True, False):
        if abs(remaining) <= tiny:
            remaining = 0.0
            break
        room = np.zeros(n)
        for i in range(n):
            if only_fast and not fast[i]:
                continue
            if remaining > 0.0:
                room[i] = max(discharge_max_w[i] - shares[i], 0.0)
            else:
                room[i] = max(charge_max_w[i] + shares[i], 0.0)
        extra, _ = allocate(remaining, room, room, room)
        shares += extra
        remaining -= extra.sum()
    if abs(remaining) <= tiny:
        remaining = 0.0
    return shares, abs(remaining)
