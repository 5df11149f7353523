"""The snapshot seam: every device's latest values, frozen for one tick, stale ones flagged."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

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
class DeviceSnapshot:
    id: str
    kind: str
    connected: bool
    last_error: str | None
    points: Mapping[str, PointReading]

    def value(self, point: str) -> float | None:
        """The point's value if fresh and valid, else None."""
        reading = self.points.get(point)
        return reading.value if reading is not None and reading.usable else None

    def values(self, *points: str) -> tuple[float, ...] | None:
        """All of these points' values, or None if any of them is stale or invalid."""
        out = tuple(self.value(p) for p in points)
        return None if any(v is None for v in out) else out  # type: ignore[return-value]


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # time.monotonic()
    wall_time: float  # time.time(), for people and the store
    devices: Mapping[str, DeviceSnapshot]

    def of_kind(self, kind: str) -> list[DeviceSnapshot]:
        return [d for d in self.devices.values() if d.kind == kind]


def take_snapshot(
    drivers: Mapping[str, DeviceDriver],
    configs: Mapping[str, DeviceConfig],
    now: float,
    wall_time: float,
) -> Snapshot:
    devices = {}
    for device_id, driver in drivers.items():
        stale_after = configs[device_id].stale_after_s
        points = {}
        for name, pv in driver.values.items():
            age = now - pv.read_at
            points[name] = PointReading(
                pv.value,
                pv.unit,
                age,
                stale=age > stale_after or not driver.connected,
                valid=pv.valid and math.isfinite(pv.value),
            )
        devices[device_id] = DeviceSnapshot(
            device_id, driver.kind, driver.connected, driver.counters.last_error, points
        )
    return Snapshot(now, wall_time, devices)
