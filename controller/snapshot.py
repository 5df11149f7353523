"""The snapshot seam: every device's latest values and link state, frozen for one tick, stale
ones flagged, and the typed assets built from them once, by role (`controller/assets.py`).

Everything here is a copy: a reader on another thread holds a snapshot while the drivers go on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from controller.assets import SiteAssets, assets_of
from controller.config import DeviceConfig
from drivers.base import DeviceDriver


@dataclass(frozen=True)
class PointReading:
    value: float
    unit: str
    age_s: float
    stale: bool
    valid: bool

    @property
    def usable(self) -> bool:
        return self.valid and not self.stale


@dataclass(frozen=True)
class LinkCounters:
    """A driver's counters as they stood at the tick."""

    polls: int = 0
    errors: int = 0
    errors_by_kind: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    retries: int = 0
    writes: int = 0
    write_errors: int = 0
    last_poll_s: float | None = None
    latency_bucket_counts: tuple[int, ...] = ()
    latency_sum_s: float = 0.0
    last_write_error: str | None = None
    last_write_error_at: float = -math.inf  # time.monotonic()


@dataclass(frozen=True)
class DeviceSnapshot:
    id: str
    kind: str
    connected: bool
    last_error: str | None
    points: Mapping[str, PointReading]  # by the map's point names (for people: the API)
    roles: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # role → point
    frozen: bool = False  # answers, but its own heartbeat stands still
    counters: LinkCounters = field(default_factory=LinkCounters)
    identity: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def role(self, role: str) -> float | None:
        """The value of the point playing `role`, if fresh and valid, else None."""
        reading = self.role_reading(role)
        return reading.value if reading is not None and reading.usable else None

    def role_reading(self, role: str) -> PointReading | None:
        point = self.roles.get(role)
        return self.points.get(point) if point is not None else None


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # time.monotonic()
    wall_time: float  # time.time(), for people and the store
    devices: Mapping[str, DeviceSnapshot]
    assets: SiteAssets  # the devices as the controller thinks of them, by role


def _counters(driver: DeviceDriver) -> LinkCounters:
    c = driver.counters
    return LinkCounters(
        polls=c.polls_total,
        errors=c.errors_total,
        errors_by_kind=MappingProxyType(dict(c.errors_by_kind)),
        retries=c.retries_total,
        writes=c.writes_total,
        write_errors=c.write_errors_total,
        last_poll_s=c.last_latency_s if c.polls_total else None,
        latency_bucket_counts=tuple(c.latency_bucket_counts),
        latency_sum_s=c.latency_sum_s,
        last_write_error=c.last_write_error,
        last_write_error_at=c.last_write_error_at,
    )


def device_snapshot(driver: DeviceDriver, stale_after_s: float, now: float) -> DeviceSnapshot:
    points = {}
    for name, pv in driver.values.items():
        age = now - pv.read_at
        points[name] = PointReading(
            pv.value,
            pv.unit,
            age,
            stale=age > stale_after_s or not driver.connected,
            valid=pv.valid and math.isfinite(pv.value),
        )
    return DeviceSnapshot(
        driver.device_id,
        driver.kind,
        driver.connected,
        driver.counters.last_error,
        MappingProxyType(points),
        MappingProxyType(driver.map.roles),
        driver.frozen,
        _counters(driver),
        MappingProxyType(dict(driver.identity)),
    )


def take_snapshot(
    drivers: Mapping[str, DeviceDriver],
    configs: Mapping[str, DeviceConfig],
    now: float,
    wall_time: float,
) -> Snapshot:
    devices = {
        device_id: device_snapshot(driver, configs[device_id].stale_after_s, now)
        for device_id, driver in drivers.items()
    }
    return Snapshot(now, wall_time, MappingProxyType(devices), assets_of(devices.values()))
