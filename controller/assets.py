"""The site's devices as the controller thinks of them: battery assets, the grid meter, cooling
units. Built once per tick from the snapshot, by role (`drivers/kinds.py`); every reader (the
site mapping, metrics, alarms, the API's state) reads these, never a map's point names.

A value is None while its point is stale or invalid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from drivers.kinds import BATTERY_KINDS

if TYPE_CHECKING:
    from controller.snapshot import DeviceSnapshot


@dataclass(frozen=True)
class BatteryAsset:
    """A UPS module or a BESS: W, Wh, ratio; power positive = discharge."""

    id: str
    kind: str  # "ups" or "bess"
    connected: bool
    soc: float | None
    capacity_wh: float | None
    power_w: float | None  # measured
    discharge_max_w: float | None
    charge_max_w: float | None
    rated_w: float | None  # UPS: rated output, for its ride-through reserve
    load_w: float | None  # UPS: the IT load it carries (its battery feeds only that)
    enabled: float | None  # BESS: 1 while it follows its setpoint
    mode: float | None  # UPS: 0 normal, 1 battery, 2 bypass

    @property
    def instant(self) -> bool:
        """Acts at once (a UPS's rectifier cap), so it takes the fast part of the power."""
        return self.kind == "ups"

    def missing(self) -> list[str]:
        """The roles dispatch needs of this asset that are unknown now."""
        needed = {
            "soc": self.soc,
            "capacity_wh": self.capacity_wh,
            "discharge_max_w": self.discharge_max_w,
            "charge_max_w": self.charge_max_w,
        }
        if self.kind == "ups":
            needed |= {"rated_w": self.rated_w, "load_w": self.load_w}
        return [role for role, value in needed.items() if value is None]


@dataclass(frozen=True)
class GridMeter:
    id: str
    power_w: float | None  # positive = import
    frequency_hz: float | None


@dataclass(frozen=True)
class CoolingUnit:
    id: str
    connected: bool
    supply_c: float | None
    return_c: float | None
    pressure_pa: float | None
    cooling_power_w: float | None  # electrical: pumps and dry cooler
    heat_reused_w: float | None
    has_reuse: bool  # its map takes the heat consumer's request
    readings: Mapping[str, float | None]  # every role it has, for metrics and resend checks


@dataclass(frozen=True)
class SiteAssets:
    batteries: tuple[BatteryAsset, ...]
    meter: GridMeter | None
    cdus: tuple[CoolingUnit, ...]

    @property
    def ups_modules(self) -> tuple[BatteryAsset, ...]:
        return tuple(b for b in self.batteries if b.kind == "ups")


def _battery(dev: DeviceSnapshot) -> BatteryAsset:
    r = dev.role
    power_max = r("power_max_w")  # a BESS: one rating either way
    return BatteryAsset(
        id=dev.id,
        kind=dev.kind,
        connected=dev.connected,
        soc=r("soc"),
        capacity_wh=r("capacity_wh"),
        power_w=r("battery_w") if dev.kind == "ups" else r("power_w"),
        discharge_max_w=r("discharge_max_w") if dev.kind == "ups" else power_max,
        charge_max_w=r("charge_max_w") if dev.kind == "ups" else power_max,
        rated_w=r("rated_w"),
        load_w=r("load_w"),
        enabled=r("enable"),
        mode=r("mode"),
    )


def _cdu(dev: DeviceSnapshot) -> CoolingUnit:
    r = dev.role
    return CoolingUnit(
        id=dev.id,
        connected=dev.connected,
        supply_c=r("supply_c"),
        return_c=r("return_c"),
        pressure_pa=r("pressure_pa"),
        cooling_power_w=r("cooling_power_w"),
        heat_reused_w=r("heat_reused_w"),
        has_reuse="reuse_request_w" in dev.roles,
        readings=MappingProxyType({role: r(role) for role in dev.roles}),
    )


def assets_of(devices: Iterable[DeviceSnapshot]) -> SiteAssets:
    batteries, cdus, meter = [], [], None
    for dev in devices:
        if dev.kind in BATTERY_KINDS:
            batteries.append(_battery(dev))
        elif dev.kind == "cdu":
            cdus.append(_cdu(dev))
        elif dev.kind == "meter":
            meter = GridMeter(dev.id, dev.role("power_w"), dev.role("frequency_hz"))
    return SiteAssets(tuple(batteries), meter, tuple(cdus))
