"""How the site's devices map onto the dispatch core: readings in, commands out. Pure functions.

Which point of which device kind means what lives here, once: the UPS output is IT load, the
CDU's cooling power is cooling load, a UPS takes its share of battery power as a cap on its
rectifier input, a BESS as an active power setpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.config import DispatchConfig
from controller.dispatch import AssetState, DispatchInputs, DispatchResult
from controller.snapshot import DeviceSnapshot, Snapshot

HEARTBEAT_MODULO = 65536  # heartbeat points are uint16


@dataclass(frozen=True)
class Command:
    device: str
    point: str
    value: float


@dataclass(frozen=True)
class SiteReadings:
    it_w: float | None
    cooling_w: float | None
    grid_w: float | None
    frequency_hz: float | None
    battery_w: float  # measured, all usable assets, positive = discharge
    soc: dict[str, float]  # per battery asset with a fresh reading
    missing: tuple[str, ...]  # "device.point" that control needs and that is stale or invalid


# What the dispatch must know of each battery asset, in the order _asset_state reads it.
ASSET_POINTS = {
    "ups": (
        "battery_soc_ratio",
        "battery_capacity_wh",
        "max_discharge_power_w",
        "max_charge_power_w",
        "rated_power_w",
        "output_power_w",
    ),
    "bess": ("soc_ratio", "wh_rtg", "w_max_rtg"),
}


def _asset_state(dev: DeviceSnapshot, cfg: DispatchConfig) -> AssetState | None:
    """An asset's energy and limits from its points, or None while any is unknown."""
    vals = dev.values(*ASSET_POINTS[dev.kind])
    if vals is None:
        return None
    if dev.kind == "ups":
        soc, wh, dis, chg, rated, output = vals
        # The UPS's first duty: carry its full rated load for ride_through_s on battery.
        reserve_j = rated * cfg.ride_through_s / cfg.discharge_efficiency
        dis = min(dis, output)  # its battery feeds its load; a UPS does not export
    else:
        soc, wh, dis = vals
        chg, reserve_j = dis, 0.0
    capacity = wh * 3600.0
    return AssetState(
        dev.id,
        energy_j=soc * capacity,
        capacity_j=capacity,
        floor_j=max(reserve_j, cfg.soc_min_ratio * capacity),
        discharge_max_w=dis,
        charge_max_w=chg,
        instant=dev.kind == "ups",
    )


SOC_POINT = {kind: points[0] for kind, points in ASSET_POINTS.items()}  # SoC comes first
POWER_POINT = {"ups": "battery_power_w", "bess": "w"}


def read_site(snapshot: Snapshot) -> SiteReadings:
    missing: list[str] = []

    def need(dev: DeviceSnapshot, point: str) -> float | None:
        v = dev.value(point)
        if v is None:
            missing.append(f"{dev.id}.{point}")
        return v

    ups_out = [need(d, "output_power_w") for d in snapshot.of_kind("ups")]
    it_w = None if any(v is None for v in ups_out) else sum(ups_out)  # type: ignore[arg-type]
    cdus = snapshot.of_kind("cdu")
    cooling = [d.value("cooling_power_w") for d in cdus]
    cooling_w = None if any(v is None for v in cooling) else sum(cooling)  # type: ignore[arg-type]
    meter = snapshot.of_kind("meter")[0]
    soc: dict[str, float] = {}
    battery_w = 0.0
    for dev in snapshot.devices.values():
        if dev.kind in SOC_POINT:
            for point in ASSET_POINTS[dev.kind]:
                need(dev, point)
            s, p = dev.value(SOC_POINT[dev.kind]), dev.value(POWER_POINT[dev.kind])
            if s is not None:
                soc[dev.id] = s
            battery_w += p or 0.0
    return SiteReadings(
        it_w=it_w,
        cooling_w=cooling_w,
        grid_w=need(meter, "active_power_w"),
        frequency_hz=meter.value("frequency_hz"),
        battery_w=battery_w,
        soc=soc,
        missing=tuple(missing),
    )


def dispatch_inputs(
    snapshot: Snapshot, readings: SiteReadings, site_load_w: float, cfg: DispatchConfig
) -> DispatchInputs | None:
    """The core's inputs, or None while any battery asset's state is unknown."""
    assets = []
    for dev in snapshot.devices.values():
        if dev.kind in SOC_POINT:
            asset = _asset_state(dev, cfg)
            if asset is None:
                return None
            assets.append(asset)
    frequency = readings.frequency_hz if readings.frequency_hz is not None else math.nan
    return DispatchInputs(site_load_w=site_load_w, frequency_hz=frequency, assets=tuple(assets))


def _asset_commands(dev: DeviceSnapshot, asset_w: float | None, beat: int) -> list[Command]:
    """Commands for one battery asset; asset_w None means: stand down (carry nothing)."""
    cmds = [Command(dev.id, "heartbeat", float(beat % HEARTBEAT_MODULO))]
    if dev.kind == "ups":
        output = dev.value("output_power_w")
        if output is None:
            return []  # cannot place a cap without knowing the load; the watchdog reverts it
        share = 0.0 if asset_w is None else asset_w
        cmds.append(Command(dev.id, "input_power_limit_w", max(output - share, 0.0)))
    else:
        cmds.append(Command(dev.id, "w_set", 0.0 if asset_w is None else asset_w))
        if dev.value("w_set_ena") != 1.0:
            cmds.append(Command(dev.id, "w_set_ena", 1.0))
    return cmds


def commands_for(snapshot: Snapshot, result: DispatchResult | None, beat: int) -> list[Command]:
    """Setpoints and heartbeats for every battery asset. Without a result (data missing), every
    asset stands down: the grid carries the load."""
    cmds: list[Command] = []
    for dev in snapshot.devices.values():
        if dev.kind in SOC_POINT and dev.connected:
            asset_w = None if result is None else result.asset_w.get(dev.id)
            cmds.extend(_asset_commands(dev, asset_w, beat))
    return cmds


SUPPLY_SETPOINT = "supply_temperature_setpoint_c"
PUMP_SETPOINT = "pump_speed_setpoint_ratio"
REUSE_REQUEST = "heat_reuse_request_w"
REUSE_MIN_TEMPERATURE = "heat_reuse_min_temperature_c"
TOLERANCE = {SUPPLY_SETPOINT: 0.01, PUMP_SETPOINT: 0.001, REUSE_REQUEST: 1.0}  # else 0.01


def cdu_readings(
    snapshot: Snapshot,
) -> dict[str, tuple[float | None, float | None, float | None]]:
    """Each CDU's supply and return temperature and differential pressure, None where stale
    or invalid."""
    return {
        dev.id: (
            dev.value("supply_temperature_c"),
            dev.value("return_temperature_c"),
            dev.value("differential_pressure_pa"),
        )
        for dev in snapshot.of_kind("cdu")
    }


def cooling_commands(snapshot: Snapshot, device: str, values: dict[str, float]) -> list[Command]:
    """A CDU's setpoints where it shows other values (so a steady command is not resent)."""
    dev = snapshot.devices[device]
    if not dev.connected:
        return []
    return [
        Command(device, point, value)
        for point, value in values.items()
        if (shown := dev.value(point)) is None or abs(shown - value) > TOLERANCE.get(point, 0.01)
    ]
