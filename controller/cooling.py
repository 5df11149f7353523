"""Cooling control, pure: the CDU's supply temperature held at its target and the loop's ΔT at
its own, from the CDU's readings; a safe fallback when they cannot be trusted.

Supply: the CDU regulates its supply itself, proportionally, so under load it settles off its
setpoint. A PI supervisor trims the setpoint it is given until the measured supply sits on the
target, within the ASHRAE class's band, with a rate limit on setpoint changes and anti-windup:
the integral stops while the setpoint sent falls short of what the PI asks in the error's
direction (at the class's bound, or held by the rate limiter), and, farther than
`integral_band_c` from the target, while the supply is already on its way there (a start, a
recovery: the proportional term carries those, and integrating them is what overshoots).
Pump: a PI on the loop's ΔT (return − supply): too wide a ΔT means too little flow; or, with
`pump_control="pressure"`, a PI on the loop's differential pressure. Minimum speed keeps the
minimum flow.

Fallback: when the readings are missing or invalid, the pumps run at `safe_pump_speed` and the
setpoint goes to `min_supply_c`. The integrals are kept (they hold the CDU's offset at this load,
which a loss of data does not change), and the setpoint leaves the fallback's through the rate
limiter: recovery is bumpless.
Start-up: the CDU's data are missing for a few seconds after every start (its link is still
connecting), which is no fault. Until its first usable data, for up to `startup_grace_s`,
`cooling_step` returns no command at all, and the CDU keeps its own setpoint. Past the grace
without data it falls back; once data have been seen, any loss falls back at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class CoolingConfig:
    target_supply_c: float = 32.0
    min_supply_c: float = 18.0  # the lowest setpoint allowed (also the fallback's)
    max_supply_c: float = 45.0  # the class's maximum (ASHRAE W45): never above
    setpoint_rate_c_per_s: float = 0.2  # how fast the CDU's setpoint may move
    kp: float = 0.8  # °C of setpoint per °C of error
    ki_per_s: float = 0.02  # integral: 1 / (50 s)
    integral_band_c: float = 1.0  # beyond this error, no integral while the supply approaches
    delta_t_target_k: float = 15.0
    pump_control: str = "delta_t"  # or "pressure"
    pressure_target_pa: float = 150_000.0
    pressure_kp_per_pa: float = 2e-6  # speed per Pa of error
    pump_kp: float = 0.02  # speed per K of ΔT error
    pump_ki_per_s: float = 0.001
    min_pump_speed: float = 0.3  # minimum flow
    safe_pump_speed: float = 0.9
    startup_grace_s: float = 15.0  # at start, no data for this long is not yet a fault


@dataclass(frozen=True)
class CoolingState:
    integral_c: float = 0.0
    setpoint_c: float = math.nan  # the setpoint last sent (nan: none yet)
    pump_integral: float = 0.0
    fallback: bool = False
    supply_c: float = math.nan  # the supply last measured (nan: none yet)
    data_seen: bool = False  # usable data have arrived since start
    startup_wait_s: float = 0.0  # how long the start has waited for them


@dataclass(frozen=True)
class CoolingCommand:
    supply_setpoint_c: float
    pump_speed: float
    fallback: bool  # telemetry not usable: safe speed, lowest setpoint, alarm


REUSE_MARGIN_K = 1.0  # the mean return this far above what the heat consumer needs


def reuse_target_c(cfg: CoolingConfig, wanted_c: float, consumer_min_c: float) -> float:
    """Heat reuse: a supply warm enough that the return (supply + the loop's ΔT) reaches the
    consumer's temperature, never above the class's maximum."""
    needed = consumer_min_c + REUSE_MARGIN_K - cfg.delta_t_target_k
    return _limit(max(wanted_c, needed), cfg.min_supply_c, cfg.max_supply_c)


def _limit(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _usable(
    cfg: CoolingConfig, supply_c: float | None, return_c: float | None, pressure_pa: float | None
) -> bool:
    """Supply and return, and the pressure when the pumps hold it: present and finite."""
    needed = [supply_c, return_c] + ([pressure_pa] if cfg.pump_control == "pressure" else [])
    return all(v is not None and math.isfinite(v) for v in needed)


def _blind(
    state: CoolingState, cfg: CoolingConfig, dt_s: float
) -> tuple[CoolingState, CoolingCommand | None]:
    """No usable data: nothing sent while a start waits for its first data, else the fallback."""
    if not state.data_seen:
        waited_s = state.startup_wait_s + dt_s
        state = replace(state, startup_wait_s=waited_s)
        if waited_s < cfg.startup_grace_s:
            return state, None  # still connecting: the CDU keeps its own setpoint
    # Blind: run the pumps at a safe speed and ask for the coldest supply allowed. The
    # integrals are kept for the recovery.
    fallback = replace(state, setpoint_c=cfg.min_supply_c, fallback=True)
    return fallback, CoolingCommand(cfg.min_supply_c, cfg.safe_pump_speed, True)


def _integral_gain_per_s(
    state: CoolingState, cfg: CoolingConfig, supply_c: float, error: float
) -> float:
    """Far from the target, a supply already heading there is in transit (a start, a recovery
    from the fallback): the proportional term carries it, and integrating the transient would
    wind up and overshoot. A supply that stays off target still integrates: an offset the
    proportional term cannot remove alone."""
    approaching = (supply_c - state.supply_c) * error > 0  # nan (no previous): False
    return 0.0 if abs(error) > cfg.integral_band_c and approaching else cfg.ki_per_s


def cooling_step(
    state: CoolingState,
    cfg: CoolingConfig,
    supply_c: float | None,
    return_c: float | None,
    dt_s: float,
    pressure_pa: float | None = None,
) -> tuple[CoolingState, CoolingCommand | None]:
    """One control step from the CDU's measured supply and return, and its differential
    pressure when the pumps hold that (None: stale or invalid). No command (None) while a
    start waits for the CDU's first data."""
    if not _usable(cfg, supply_c, return_c, pressure_pa):
        return _blind(state, cfg, dt_s)

    target = _limit(cfg.target_supply_c, cfg.min_supply_c, cfg.max_supply_c)
    assert supply_c is not None and return_c is not None
    error = target - supply_c
    integral = state.integral_c + _integral_gain_per_s(state, cfg, supply_c, error) * error * dt_s
    wanted = target + cfg.kp * error + integral
    bounded = _limit(wanted, cfg.min_supply_c, cfg.max_supply_c)
    previous = bounded if math.isnan(state.setpoint_c) else state.setpoint_c
    step = cfg.setpoint_rate_c_per_s * dt_s
    setpoint = _limit(bounded, previous - step, previous + step)
    if (wanted - setpoint) * error > 0:
        # Pinned at a bound or held by the rate limiter, and the error pushes further: the
        # integral would only wind up, so it holds.
        integral = state.integral_c

    if cfg.pump_control == "pressure":  # too little pressure: faster
        pump_error = (cfg.pressure_target_pa - pressure_pa) * cfg.pressure_kp_per_pa  # type: ignore[operator]
        gain = 1.0
    else:  # too wide a ΔT: too little flow, faster
        pump_error = return_c - supply_c - cfg.delta_t_target_k
        gain = cfg.pump_kp
    pump_integral = state.pump_integral + cfg.pump_ki_per_s / cfg.pump_kp * gain * pump_error * dt_s
    speed_wanted = 0.5 + gain * pump_error + pump_integral
    speed = _limit(speed_wanted, cfg.min_pump_speed, 1.0)
    if speed != speed_wanted and (speed_wanted - speed) * pump_error > 0:
        pump_integral = state.pump_integral

    new = replace(state, integral_c=integral, setpoint_c=setpoint, pump_integral=pump_integral,
                  fallback=False, supply_c=supply_c, data_seen=True)  # fmt: skip
    return new, CoolingCommand(setpoint, speed, False)
