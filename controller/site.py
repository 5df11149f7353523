"""How the site's assets map onto the dispatch core: readings in, commands out. Pure functions.

What each role means for control lives here, once: the UPS outputs are the IT load, the CDUs'
cooling power is the cooling load, a UPS takes its share of battery power as a cap on its
rectifier input, a BESS as an active power setpoint. Commands name roles; the loop hands each
to the device's driver as the point its map binds to that role.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from controller.assets import BatteryAsset, CoolingUnit, SiteAssets
from controller.config import DispatchConfig
from controller.dispatch import AssetState, DispatchInputs, DispatchResult

HEARTBEAT_MODULO = 65536  # heartbeat points are uint16


@dataclass(frozen=True)
class Command:
    device: str
    role: str
    value: float


@dataclass(frozen=True)
class SiteReadings:
    it_w: float | None
    cooling_w: float | None
    grid_w: float | None
    frequency_hz: float | None
    battery_w: float  # measured, all usable assets, positive = discharge
    battery_asset_w: Mapping[str, float]  # measured, per asset with a usable reading
    soc: Mapping[str, float]  # per battery asset with a fresh reading
    reused_heat_w: float | None  # delivered to the heat consumer by every CDU that serves one
    missing: tuple[str, ...]  # "device.role" that control needs and that is stale or invalid


def _total(values: list[float | None]) -> float | None:
    """The sum, or None while any part is unknown (a partial sum would mislead)."""
    return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]


def read_site(assets: SiteAssets) -> SiteReadings:
    missing = [f"{b.id}.{role}" for b in assets.batteries for role in b.missing()]
    meter = assets.meter
    grid_w = meter.power_w if meter is not None else None
    if grid_w is None:
        missing.append(f"{meter.id if meter else 'meter'}.power_w")
    serving = [c for c in assets.cdus if "heat_reused_w" in c.readings]
    per_asset = {b.id: b.power_w for b in assets.batteries if b.power_w is not None}
    return SiteReadings(
        it_w=_total([b.load_w for b in assets.ups_modules]),
        cooling_w=_total([c.cooling_power_w for c in assets.cdus]),
        grid_w=grid_w,
        frequency_hz=meter.frequency_hz if meter is not None else None,
        battery_w=sum(per_asset.values()),
        battery_asset_w=MappingProxyType(per_asset),
        soc=MappingProxyType({b.id: b.soc for b in assets.batteries if b.soc is not None}),
        reused_heat_w=_total([c.heat_reused_w for c in serving]) if serving else None,
        missing=tuple(missing),
    )


def _asset_state(b: BatteryAsset, cfg: DispatchConfig) -> AssetState | None:
    """An asset's energy and limits, or None while any is unknown."""
    if b.missing():
        return None
    capacity = b.capacity_wh * 3600.0  # type: ignore[operator]
    discharge_max, charge_max = b.discharge_max_w, b.charge_max_w
    reserve_j = 0.0
    if b.kind == "ups":
        # The UPS's first duty: carry its full rated load for ride_through_s on battery.
        reserve_j = b.rated_w * cfg.ride_through_s / cfg.discharge_efficiency  # type: ignore[operator]
        discharge_max = min(discharge_max, b.load_w)  # type: ignore[type-var]  # no export
    return AssetState(
        b.id,
        energy_j=b.soc * capacity,  # type: ignore[operator]
        capacity_j=capacity,
        floor_j=max(reserve_j, cfg.soc_min_ratio * capacity),
        discharge_max_w=discharge_max,  # type: ignore[arg-type]
        charge_max_w=charge_max,  # type: ignore[arg-type]
        instant=b.instant,
    )


def dispatch_inputs(
    assets: SiteAssets, readings: SiteReadings, site_load_w: float, cfg: DispatchConfig
) -> DispatchInputs | None:
    """The core's inputs, or None while any battery asset's state is unknown."""
    states = []
    for b in assets.batteries:
        state = _asset_state(b, cfg)
        if state is None:
            return None
        states.append(state)
    frequency = readings.frequency_hz if readings.frequency_hz is not None else math.nan
    return DispatchInputs(site_load_w=site_load_w, frequency_hz=frequency, assets=tuple(states))


def _asset_commands(b: BatteryAsset, asset_w: float | None, beat: int) -> list[Command]:
    """Commands for one battery asset; asset_w None means: stand down (carry nothing)."""
    cmds = [Command(b.id, "heartbeat", float(beat % HEARTBEAT_MODULO))]
    share = 0.0 if asset_w is None else asset_w
    if b.kind == "ups":
        if b.load_w is None:
            return []  # cannot place a cap without knowing the load; the watchdog reverts it
        cmds.append(Command(b.id, "input_limit_w", max(b.load_w - share, 0.0)))
    else:
        cmds.append(Command(b.id, "setpoint_w", share))
        if b.enabled != 1.0:
            cmds.append(Command(b.id, "enable", 1.0))
    return cmds


def commands_for(assets: SiteAssets, result: DispatchResult | None, beat: int) -> list[Command]:
    """Setpoints and heartbeats for every battery asset. Without a result (data missing), every
    asset stands down: the grid carries the load."""
    cmds: list[Command] = []
    for b in assets.batteries:
        if b.connected:
            asset_w = None if result is None else result.asset_w.get(b.id)
            cmds.extend(_asset_commands(b, asset_w, beat))
    return cmds


# How far a CDU's shown setpoint may sit from ours before we send it again (default 0.01).
TOLERANCE = {"supply_setpoint_c": 0.01, "pump_setpoint_ratio": 0.001, "reuse_request_w": 1.0}


def cooling_commands(cdu: CoolingUnit, values: Mapping[str, float]) -> list[Command]:
    """A CDU's setpoints (by role) where it shows other values, so a steady command is not
    resent; roles its map does not have are not sent."""
    if not cdu.connected:
        return []
    return [
        Command(cdu.id, role, value)
        for role, value in values.items()
        if role in cdu.readings and _differs(cdu.readings[role], value, TOLERANCE.get(role, 0.01))
    ]


def _differs(shown: float | None, wanted: float, tolerance: float) -> bool:
    return shown is None or abs(shown - wanted) > tolerance
