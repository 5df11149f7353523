"""A site file, read and checked whole before anything starts: the YAML (no key twice), the
site's own rules (`config.py`), every device's map and the roles it provides for its kind,
and the demo plant's settings. Anything wrong is a ConfigError naming file, device and role,
so `check-config` and `run` refuse it with exit 2 instead of failing tick after tick.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from controller.config import ConfigError, SiteConfig, describe_errors
from controller.config import parse_site as parse_site_fields
from drivers.devicemap import DeviceMap, DeviceMapError
from drivers.maploader import load_map
from drivers.sim.settings import Plant, SimDevice, SimulationConfig
from drivers.yamlfile import read_yaml

DEFAULT_SITE = resources.files("controller") / "default_site.yaml"
# Roles the site's own settings make necessary, beyond what each kind requires.
COOLING_NEEDS = {"pressure": ("pressure_pa",)}


def default_site_text() -> str:
    return DEFAULT_SITE.read_text()


@cache
def _map(name: str) -> DeviceMap:
    return load_map(name)


def device_maps(site: SiteConfig, source: str = "site") -> dict[str, DeviceMap]:
    """Each device's map, checked against the device: the same kind, and every role the site
    needs of it. Raises ConfigError naming the device."""
    maps: dict[str, DeviceMap] = {}
    for d in site.devices:
        where = f"{source}: device {d.id}"
        try:
            devmap = _map(d.map_name)
        except DeviceMapError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if devmap.kind != d.kind:
            raise ConfigError(
                f"{where} is a {d.kind}, but its map {devmap.source} describes a {devmap.kind}"
            )
        needed = COOLING_NEEDS.get(site.cooling.pump_control, ()) if d.kind == "cdu" else ()
        missing = [r for r in needed if r not in devmap.roles]
        if missing:
            raise ConfigError(
                f"{where}: cooling.pump_control is {site.cooling.pump_control!r}, but its map "
                f"{devmap.source} has no point for the role(s) {missing}"
            )
        maps[d.id] = devmap
    return maps


def simulation_of(site: SiteConfig) -> SimulationConfig:
    try:
        return SimulationConfig(**site.simulation)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, prefix="simulation")) from None


def plant_of(site: SiteConfig) -> Plant:
    """The simulators' view of the site: its devices and the `simulation:` settings."""
    devices = tuple(
        SimDevice(d.id, d.kind, d.map_name, d.host, d.port, d.unit_id) for d in site.devices
    )
    return Plant(devices, simulation_of(site))


def parse_site(data: object, overrides: dict | None = None, source: str = "site") -> SiteConfig:
    """A site from parsed YAML, checked whole: fields, maps and roles, the plant's settings."""
    site = parse_site_fields(data, overrides)
    device_maps(site, source)
    simulation_of(site)
    return site


def shift_ports(data: object, offset: int) -> object:
    """The site with every port it listens on or calls moved by `offset` (the API, every
    device, the simulated inference server and the token sources that point at it), so a
    second demo can run beside the first."""
    if not offset or not isinstance(data, dict):
        return data
    data = copy.deepcopy(data)
    data["api_port"] = data.get("api_port", SiteConfig.model_fields["api_port"].default) + offset
    for module in data.get("modules") or []:
        for device in module.get("devices") or []:
            if isinstance(device.get("port"), int):
                device["port"] += offset
    simulation = data.get("simulation") or {}
    if isinstance(port := simulation.get("inference_port"), int):
        simulation["inference_port"] = port + offset
        for source in data.get("token_sources") or []:
            source["url"] = str(source.get("url", "")).replace(f":{port}/", f":{port + offset}/")
    return data


def load_site(
    path: Path | None = None, overrides: dict | None = None, port_offset: int = 0
) -> SiteConfig:
    """Load a site file (or the built-in default site), move its ports by `port_offset`,
    apply overrides, check it whole."""
    if path is None:
        source = "built-in site"
        data = read_yaml(DEFAULT_SITE, source, ConfigError)
    else:
        source = f"site file {path}"
        data = read_yaml(path, source, ConfigError)
    return parse_site(shift_ports(data, port_offset), overrides, source)
