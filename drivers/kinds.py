"""Device kinds and the roles their points play: what a point is *for*, declared once.

A map binds its points to roles (`role: soc` on a point); a kind says which roles it has and
which of them the controller needs. Everything above the drivers (the controller's views of
the site, the simulators' physics) speaks roles, never a map's point names, so a new vendor's
device is a new map file and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Role:
    unit: str  # the unit the point must carry, as the maps write it
    required: bool  # the controller cannot run the kind without it
    access: Literal["r", "rw"]  # "rw": the controller writes it
    description: str


def _r(unit: str, description: str, required: bool = False) -> Role:
    return Role(unit, required, "r", description)


def _w(unit: str, description: str, required: bool = True) -> Role:
    return Role(unit, required, "rw", description)


REQUIRED, OPTIONAL = True, False

KINDS: dict[str, dict[str, Role]] = {
    # A grid-interactive UPS module: driven by capping its rectifier's input power, which makes
    # its battery carry the rest of its load.
    "ups": {
        "load_w": _r("W", "power to the IT load (the UPS's output)", REQUIRED),
        "input_w": _r("W", "rectifier input power"),
        "battery_w": _r("W", "battery power, positive = discharge", REQUIRED),
        "soc": _r("1", "battery state of charge, 0–1", REQUIRED),
        "capacity_wh": _r("Wh", "battery energy rating", REQUIRED),
        "rated_w": _r("W", "rated output: the ride-through reserve counts on it", REQUIRED),
        "discharge_max_w": _r("W", "most the battery may give", REQUIRED),
        "charge_max_w": _r("W", "most the battery may take", REQUIRED),
        "mode": _r("1", "0 normal, 1 battery, 2 bypass"),
        "alarms": _r("1", "the device's alarm bits"),
        "runtime_s": _r("s", "battery runtime at the present load"),
        "input_limit_w": _w("W", "rectifier input power limit: how the controller drives it"),
        "heartbeat": _w("1", "the controller's heartbeat the UPS watches"),
    },
    # A battery energy storage system at the point of connection, following a power setpoint.
    "bess": {
        "power_w": _r("W", "active power, positive = discharge", REQUIRED),
        "frequency_hz": _r("Hz", "frequency at its terminals"),
        "power_max_w": _r("W", "rated active power, either way", REQUIRED),
        "capacity_wh": _r("Wh", "rated energy", REQUIRED),
        "energy_available_wh": _r("Wh", "energy available now"),
        "soc": _r("1", "state of charge, 0–1", REQUIRED),
        "alarms": _r("1", "the device's alarm bits"),
        "setpoint_w": _w("W", "active power setpoint, positive = discharge"),
        "enable": _w("1", "1: follow the setpoint"),
        "heartbeat": _w("1", "the controller's heartbeat the battery watches"),
    },
    # The revenue meter at the point of connection.
    "meter": {
        "power_w": _r("W", "active power, positive = import from the grid", REQUIRED),
        "frequency_hz": _r("Hz", "grid frequency", REQUIRED),
        "energy_import_j": _r("J", "energy imported"),
    },
    # A coolant distribution unit of the liquid-cooling loop.
    "cdu": {
        "supply_c": _r("°C", "supply temperature", REQUIRED),
        "return_c": _r("°C", "return temperature", REQUIRED),
        "cooling_power_w": _r("W", "electrical power of the cooling plant", REQUIRED),
        "flow_m3_per_s": _r("m³/s", "coolant flow"),
        "pump_speed_ratio": _r("1", "pump speed, 0–1 of maximum"),
        "pressure_pa": _r("Pa", "the loop's differential pressure (needed to hold it)"),
        "heat_load_w": _r("W", "heat the loop carries away"),
        "pump_power_w": _r("W", "pump electrical power"),
        "heat_reused_w": _r("W", "heat delivered to the heat consumer"),
        "heat_reused_j": _r("J", "heat delivered to the heat consumer since start"),
        "heat_rejected_w": _r("W", "heat given to the dry cooler"),
        "ambient_c": _r("°C", "outdoor air at the cooler"),
        "supply_setpoint_c": _w("°C", "supply temperature setpoint"),
        "pump_setpoint_ratio": _w("1", "pump speed setpoint, 0–1"),
        "reuse_request_w": _w("W", "heat the consumer asks for", OPTIONAL),
        "reuse_min_temperature_c": _w("°C", "the consumer needs its heat this hot", OPTIONAL),
    },
}
BATTERY_KINDS = ("ups", "bess")


def required_roles(kind: str) -> list[str]:
    return [name for name, role in KINDS[kind].items() if role.required]
