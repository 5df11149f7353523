"""The tick's decision, pure: (state, readings, settings in force) → (state, decision).

Mode machine (auto, manual, safe, degraded while data is missing), resuming auto from where the
grid is, the operators' shed requests, cooling for each CDU, and the commands that carry it
all out. No I/O and no clock: the loop gives it the tick's snapshot and period.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from controller.config import CoolingSettings, DispatchConfig
from controller.cooling import (
    CoolingCommand,
    CoolingConfig,
    CoolingState,
    cooling_step,
    reuse_target_c,
)
from controller.dispatch import (
    bank_of,
    dispatch,
    hold,
    initial_state,
    resume_state,
    toward_zero,
)
from controller.record import Decision, InForce
from controller.site import Command, SiteReadings, commands_for, cooling_commands, dispatch_inputs
from controller.snapshot import Snapshot


@dataclass(frozen=True)
class ControlState:
    """What one tick leaves the next."""

    core: np.ndarray = field(default_factory=initial_state)  # the dispatch core's (copied)
    mode: str = "auto"
    battery_w: float = 0.0  # the last total battery power (safe mode ramps it down)
    cooling_hold_w: float = 0.0  # the last good cooling power: the CDU may report slowly
    cooling: Mapping[str, CoolingState] = field(default_factory=lambda: MappingProxyType({}))


def cooling_config(settings: CoolingSettings) -> CoolingConfig:
    """The pure controller's settings from the site's; the class gives the maximum."""
    return CoolingConfig(
        max_supply_c=settings.max_supply_c, **settings.model_dump(exclude={"water_class"})
    )


def _ramp(cfg: DispatchConfig, battery_w: float) -> float:
    """The limit the grid moves by as the battery's power goes to zero."""
    return cfg.ramp_up_w_per_s if battery_w >= 0.0 else cfg.ramp_down_w_per_s


def _cooling(
    state: ControlState,
    snapshot: Snapshot,
    cfg: CoolingConfig,
    force: InForce,
    period_s: float,
) -> tuple[dict[str, CoolingState], dict[str, CoolingCommand | None], list[Command]]:
    """Each CDU's supply and pump (fallback while its readings are unusable), and the heat
    consumer's request where heat reuse is on."""
    sp = force.setpoints
    target = sp.supply_temperature_c
    reuse_on = sp.heat_reuse_mode == "on"
    if reuse_on:
        target = reuse_target_c(cfg, target, sp.heat_reuse_min_temperature_c)
    cfg = replace(cfg, target_supply_c=target)
    states, out, commands = {}, {}, []
    for cdu in snapshot.assets.cdus:
        previous = state.cooling.get(cdu.id, CoolingState())
        states[cdu.id], command = cooling_step(
            previous, cfg, cdu.supply_c, cdu.return_c, period_s, cdu.pressure_pa
        )
        out[cdu.id] = command
        if command is None:
            continue  # waiting for its first data: it runs on its own setpoint meanwhile
        values = {
            "supply_setpoint_c": command.supply_setpoint_c,
            "pump_setpoint_ratio": command.pump_speed,
            "reuse_request_w": sp.heat_reuse_request_w if reuse_on else 0.0,
            "reuse_min_temperature_c": sp.heat_reuse_min_temperature_c,
        }
        commands += cooling_commands(cdu, values)
    return states, out, commands


def _grid_now(state: ControlState, readings: SiteReadings, site_load_w: float) -> float:
    """Where the grid is as control resumes. From a mode this node drove, the load less the
    battery power it commanded; from standby (another node drove), the meter now: under an AI
    load the battery power measured a tick ago is megawatts away from this tick's."""
    if state.mode == "standby" and readings.grid_w is not None:
        return readings.grid_w
    return site_load_w - state.battery_w


def decide(
    state: ControlState,
    snapshot: Snapshot,
    readings: SiteReadings,
    force: InForce,
    cooling_cfg: CoolingConfig,
    period_s: float,
    beat: int,
    leading: bool = True,
    plan_w: float = 0.0,
) -> tuple[ControlState, Decision]:
    """`leading`: this controller may write to the plant (always, without HA). A standby
    follows what the plant does (its mode is "standby") and decides no command, so that once
    it leads it resumes from the grid and battery power it measured, like a mode switch.
    `plan_w`: the planner's feed-forward for this tick; only auto uses it (0: the step is
    today's, to the bit)."""
    cooling_hold = readings.cooling_w if readings.cooling_w is not None else state.cooling_hold_w
    site_load = None if readings.it_w is None else readings.it_w + cooling_hold
    cfg = force.dispatch
    mode: str = force.mode
    core, result, used_w = state.core, None, 0.0
    assets = snapshot.assets
    inputs = None if site_load is None else dispatch_inputs(assets, readings, site_load, cfg)
    if inputs is None:
        core = initial_state()  # start again from the measured load: no jump on the grid
        mode = "degraded"
    elif not leading:
        mode = "standby"
        result = hold(inputs, cfg, readings.battery_w, period_s)
    elif mode == "auto":
        if state.mode != "auto":  # carry on from where the grid is
            grid_w = _grid_now(state, readings, site_load)  # type: ignore[arg-type]
            core = resume_state(grid_w, bank_of(inputs.assets).energy_j)
        used_w = plan_w
        core, result = dispatch(inputs, cfg, core, period_s, plan_w)
    else:
        target = (
            force.setpoints.manual_battery_w
            if mode == "manual"
            else toward_zero(state.battery_w, _ramp(cfg, state.battery_w), period_s)
        )
        result = hold(inputs, cfg, target, period_s)
    if result is not None and leading and force.shed_w > result.shed_request_w:
        result = replace(result, shed_request_w=force.shed_w)
    cooling_states, cooling, cooling_cmds = _cooling(state, snapshot, cooling_cfg, force, period_s)
    commands = commands_for(assets, result, beat) + cooling_cmds if leading else []
    battery_w = result.battery_w if result is not None else 0.0
    new_state = ControlState(
        core=core,
        mode=mode,
        battery_w=battery_w if leading else readings.battery_w,
        cooling_hold_w=cooling_hold,
        cooling=MappingProxyType(cooling_states),
    )
    decision = Decision(
        mode=mode,
        site_load_w=site_load,
        inputs=inputs,
        result=result,
        cooling=MappingProxyType(cooling),
        commands=tuple(commands),
        plan_w=used_w,
    )
    return new_state, decision
