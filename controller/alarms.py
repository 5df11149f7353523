"""Alarms: conditions an operator must see, raised when they hold for a while, cleared when
they have gone for a while (no flapping), kept in SQLite with their acknowledgements."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from controller.loop import TickRecord
from controller.opsdb import OpsDB

log = logging.getLogger("gridpilot.alarms")
HOLD_S = 1.0  # a condition must hold (or be gone) this long before the alarm changes
SOC_MARGIN = 0.05  # SoC within this of its floor: near the reserve


@dataclass(frozen=True)
class Condition:
    key: str  # stable: one alarm per key while it lasts
    severity: str  # critical, warning, info
    message: str


def conditions(rec: TickRecord) -> list[Condition]:
    """What is wrong at this tick. Pure."""
    found = []
    if rec.mode == "degraded":
        missing = ", ".join(rec.readings.missing[:5])
        found.append(Condition("control_degraded", "critical", f"batteries stand down: {missing}"))
    for dev in rec.snapshot.devices.values():
        if not dev.connected:
            found.append(
                Condition(f"device_down:{dev.id}", "warning", f"{dev.id}: {dev.last_error}")
            )
    for device, command in rec.cooling.items():
        if command.fallback:
            found.append(
                Condition(f"cooling_fallback:{device}", "critical",
                          f"{device}: telemetry stale or invalid; pumps at safe speed, "
                          "lowest supply setpoint")
            )  # fmt: skip
    if rec.result is not None and rec.result.shed_request_w > 0:
        w = rec.result.shed_request_w
        found.append(Condition("shed_request", "warning", f"shed {w:.0f} W to hold the limits"))
    if rec.inputs is not None:
        for a in rec.inputs.assets:
            if a.capacity_j > 0 and (a.energy_j - a.floor_j) / a.capacity_j < SOC_MARGIN:
                found.append(
                    Condition(f"soc_near_reserve:{a.id}", "warning", f"{a.id} near its reserve")
                )
    return found


class AlarmBook:
    def __init__(self, db: OpsDB) -> None:
        self.db = db
        self._active = {a["key"]: a["id"] for a in db.alarms(active_only=True)}
        self._seen: dict[str, float] = {}  # key → since when it holds (not yet raised)
        self._gone: dict[str, float] = {}  # key → since when it is gone (not yet cleared)

    def update(self, rec: TickRecord) -> None:
        now = rec.monotonic
        present = {c.key: c for c in conditions(rec)}
        for key, c in present.items():
            self._gone.pop(key, None)
            if key in self._active:
                continue
            since = self._seen.setdefault(key, now)
            if now - since >= HOLD_S:
                self._active[key] = self.db.raise_alarm(key, c.severity, c.message)
                self._seen.pop(key)
                log.warning("alarm", extra={"alarm": key, "severity": c.severity})
        for key in list(self._seen):
            if key not in present:
                del self._seen[key]
        for key, alarm_id in list(self._active.items()):
            if key in present:
                continue
            since = self._gone.setdefault(key, now)
            if now - since >= HOLD_S:
                self.db.clear_alarm(alarm_id)
                del self._active[key], self._gone[key]
                log.info("alarm cleared", extra={"alarm": key})
