"""Dispatch: the pure core (`core`) and the thin typed layer the control loop calls."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controller.config import DispatchConfig
from controller.dispatch import core


@dataclass(frozen=True)
class AssetLimits:
    """What one battery asset can do right now (W, positive = discharge)."""

    id: str
    max_discharge_w: float
    max_charge_w: float


@dataclass(frozen=True)
class DispatchInputs:
    site_load_w: float  # IT + cooling + other, W
    assets: tuple[AssetLimits, ...]


@dataclass(frozen=True)
class DispatchResult:
    grid_target_w: float  # what the grid should see, W (positive = import)
    battery_w: float  # total battery power the smoothing asks for, W
    asset_w: dict[str, float]  # per-asset setpoint, W
    unserved_w: float  # battery power no asset could carry; the grid takes it, W


def params_vector(cfg: DispatchConfig) -> np.ndarray:
    p = np.empty(core.PARAM_SIZE)
    p[core.P_TAU] = cfg.lowpass_tau_s
    p[core.P_RAMP_UP] = cfg.ramp_up_w_per_s
    p[core.P_RAMP_DOWN] = cfg.ramp_down_w_per_s
    return p


def initial_state() -> np.ndarray:
    return np.zeros(core.STATE_SIZE)


def dispatch(
    inputs: DispatchInputs, params: np.ndarray, state: np.ndarray, dt_s: float
) -> tuple[np.ndarray, DispatchResult]:
    """Pure: (inputs, parameters, state) → (next state, result)."""
    new_state, grid_w, battery_w = core.step(state, params, inputs.site_load_w, dt_s)
    dis = np.array([a.max_discharge_w for a in inputs.assets], dtype=np.float64)
    chg = np.array([a.max_charge_w for a in inputs.assets], dtype=np.float64)
    per_asset, unserved = core.allocate(battery_w, dis, chg)
    result = DispatchResult(
        # What the batteries cannot carry lands on the grid, beyond the smoothed draw.
        grid_target_w=float(grid_w + unserved),
        battery_w=float(battery_w),
        asset_w={a.id: float(w) for a, w in zip(inputs.assets, per_asset, strict=True)},
        unserved_w=float(unserved),
    )
    return new_state, result


def warm_up() -> None:
    """Compile the core once (numba caches it on disk), so no tick pays for compilation."""
    inputs = DispatchInputs(1.0, (AssetLimits("warm-up", 1.0, 1.0),))
    dispatch(inputs, params_vector(DispatchConfig()), initial_state(), 0.1)
