"""Dispatch: the pure core (`core`) and the typed layer the control loop and the replay call.

The core sees one virtual battery: the assets' power limits and energies added up. After the
core decides the total, `allocate` splits it over the assets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from controller.config import DispatchConfig
from controller.dispatch import core


@dataclass(frozen=True)
class AssetState:
    """One battery asset as the dispatch sees it (W, J; positive power = discharge)."""

    id: str
    energy_j: float  # stored now
    capacity_j: float
    floor_j: float  # never discharged below: SoC min, or the UPS's ride-through reserve
    discharge_max_w: float
    charge_max_w: float
    instant: bool = False  # acts at once (a UPS's rectifier cap), so it takes the fast part


@dataclass(frozen=True)
class DispatchInputs:
    site_load_w: float  # IT + cooling + other, W
    frequency_hz: float  # nan when unknown: no frequency response
    assets: tuple[AssetState, ...]


@dataclass(frozen=True)
class DispatchResult:
    grid_target_w: float  # what the grid should see, W (positive = import)
    battery_w: float  # total battery power, W
    asset_w: Mapping[str, float]  # per-asset setpoint, W (read-only: records are shared)
    unserved_w: float  # beyond the ramp limit or cap because the batteries could not, W
    shed_request_w: float  # load the site should shed to stay within the limit, W
    frequency_response_w: float  # power given back to the grid for frequency, W


@dataclass(frozen=True)
class Bank:
    """The assets added up into the core's one virtual battery."""

    capacity_j: float
    energy_j: float
    floor_j: float
    discharge_max_w: float
    charge_max_w: float


def bank_of(assets: tuple[AssetState, ...]) -> Bank:
    return Bank(
        capacity_j=sum(a.capacity_j for a in assets),
        energy_j=sum(a.energy_j for a in assets),
        floor_j=sum(a.floor_j for a in assets),
        discharge_max_w=sum(a.discharge_max_w for a in assets),
        charge_max_w=sum(a.charge_max_w for a in assets),
    )


def params_vector(cfg: DispatchConfig, bank: Bank) -> np.ndarray:
    p = np.empty(core.PARAM_SIZE)
    p[core.P_TAU_S] = cfg.lowpass_tau_s
    p[core.P_RAMP_UP] = cfg.ramp_up_w_per_s
    p[core.P_RAMP_DOWN] = cfg.ramp_down_w_per_s
    p[core.P_DISCHARGE_MAX_W] = bank.discharge_max_w
    p[core.P_CHARGE_MAX_W] = bank.charge_max_w
    p[core.P_ENERGY_FLOOR_J] = max(bank.floor_j, cfg.soc_min_ratio * bank.capacity_j)
    p[core.P_ENERGY_CEILING_J] = cfg.soc_max_ratio * bank.capacity_j
    p[core.P_BAND_LOW_J] = max(cfg.soc_target_low_ratio * bank.capacity_j, p[core.P_ENERGY_FLOOR_J])
    p[core.P_BAND_HIGH_J] = max(cfg.soc_target_high_ratio * bank.capacity_j, p[core.P_BAND_LOW_J])
    p[core.P_SOC_RETURN_PER_S] = 1.0 / cfg.soc_return_s
    p[core.P_ETA_CHARGE] = cfg.charge_efficiency
    p[core.P_ETA_DISCHARGE] = cfg.discharge_efficiency
    p[core.P_NOMINAL_HZ] = float(cfg.nominal_frequency_hz)
    p[core.P_DROOP] = cfg.droop
    p[core.P_DEADBAND_HZ] = cfg.deadband_hz
    p[core.P_RESPONSE_W] = cfg.frequency_response_w
    p[core.P_WINDOW_S] = cfg.average_window_s
    p[core.P_ENERGY_RETURN_S] = cfg.energy_return_s
    p[core.P_ENERGY_ANCHOR_S] = cfg.energy_anchor_s
    p[core.P_SPLIT_TAU_S] = cfg.fast_split_tau_s
    return p


def initial_state(energy_j: float = 0.0) -> np.ndarray:
    s = np.zeros(core.STATE_SIZE)
    s[core.S_ENERGY] = energy_j
    return s


def _headroom(assets: tuple[AssetState, ...], discharging: bool, cfg: DispatchConfig, dt_s: float):
    """Per asset: power limits this step, and the power it can sustain over the horizon."""
    limits, headroom = [], []
    for a in assets:
        if discharging:
            usable = max(a.energy_j - a.floor_j, 0.0) * cfg.discharge_efficiency
            limit = min(a.discharge_max_w, usable / dt_s)
        else:
            usable = max(cfg.soc_max_ratio * a.capacity_j - a.energy_j, 0.0) / cfg.charge_efficiency
            limit = min(a.charge_max_w, usable / dt_s)
        limits.append(limit)
        headroom.append(min(limit, usable / cfg.allocation_horizon_s))
    return np.array(limits), np.array(headroom)


def dispatch(
    inputs: DispatchInputs,
    cfg: DispatchConfig,
    state: np.ndarray,
    dt_s: float,
    plan_w: float = 0.0,
) -> tuple[np.ndarray, DispatchResult]:
    """Pure: (inputs, configuration, state, the planner's feed-forward) → (next state,
    result). plan_w 0 is no plan: the step is the same to the bit."""
    bank = bank_of(inputs.assets)
    cap = cfg.import_cap_w if cfg.import_cap_w is not None else math.inf
    step_in = np.array([inputs.site_load_w, inputs.frequency_hz, cap, bank.energy_j, plan_w])
    new_state, out = core.step(state, params_vector(cfg, bank), step_in, dt_s)
    battery_w = float(out[core.O_BATTERY])
    slow_w = float(out[core.O_SLOW])
    dis_limits, dis_headroom = _headroom(inputs.assets, True, cfg, dt_s)
    chg_limits, chg_headroom = _headroom(inputs.assets, False, cfg, dt_s)
    per_asset, rest = core.allocate_split(
        battery_w,
        slow_w,
        dis_limits,
        chg_limits,
        dis_headroom if slow_w >= 0.0 else chg_headroom,
        np.array([a.instant for a in inputs.assets]),
    )
    # What the assets cannot carry one by one (the bank's sum hides it) lands on the grid.
    signed_rest = rest if battery_w >= 0.0 else -rest
    result = DispatchResult(
        grid_target_w=float(out[core.O_GRID] + signed_rest),
        battery_w=float(battery_w - signed_rest),
        asset_w=MappingProxyType(
            {a.id: float(w) for a, w in zip(inputs.assets, per_asset, strict=True)}
        ),
        unserved_w=float(out[core.O_UNSERVED] + rest),
        shed_request_w=float(out[core.O_SHED] + max(signed_rest, 0.0)),
        frequency_response_w=float(out[core.O_RESPONSE]),
    )
    return new_state, result


def hold(
    inputs: DispatchInputs, cfg: DispatchConfig, battery_w: float, dt_s: float
) -> DispatchResult:
    """No smoothing: the assets carry `battery_w` (manual and safe modes), within each one's
    power and energy limits; what they cannot carry stays on the grid and is reported."""
    discharging = battery_w >= 0.0
    limits, headroom = _headroom(inputs.assets, discharging, cfg, dt_s)
    per_asset, rest = core.allocate(battery_w, limits, limits, headroom)
    carried = float(per_asset.sum())
    return DispatchResult(
        grid_target_w=inputs.site_load_w - carried,
        battery_w=carried,
        asset_w=MappingProxyType(
            {a.id: float(w) for a, w in zip(inputs.assets, per_asset, strict=True)}
        ),
        unserved_w=float(rest),
        shed_request_w=0.0,
        frequency_response_w=0.0,
    )


def toward_zero(battery_w: float, ramp_w_per_s: float, dt_s: float) -> float:
    """Safe mode: the battery's power falls to zero no faster than the grid may take it up."""
    step = ramp_w_per_s * dt_s
    return max(battery_w - step, 0.0) if battery_w >= 0.0 else min(battery_w + step, 0.0)


def resume_state(grid_w: float, energy_j: float) -> np.ndarray:
    """A core state that carries on from where the grid is now (back to auto from manual or
    safe): the low-pass and the ramp limiter start at grid_w, not at the load."""
    s = initial_state(energy_j)
    s[core.S_LOWPASS] = s[core.S_GRID] = grid_w
    s[core.S_CAP] = math.inf
    s[core.S_ANCHOR] = energy_j
    s[core.S_INIT] = 1.0
    return s


def warm_up() -> None:
    """Compile the core once (numba caches it on disk), so no tick pays for compilation."""
    asset = AssetState("warm-up", 5e9, 1e10, 1e9, 1e6, 1e6)
    dispatch(DispatchInputs(1e6, 50.0, (asset,)), DispatchConfig(), initial_state(), 0.1)
