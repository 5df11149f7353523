"""Alarms: conditions an operator must see, raised when they hold for a while, cleared when
they have gone for a while (no flapping).

Raised in memory first: the active alarms are an immutable tuple the API reads; storing them
in SQLite (raise, clear, acknowledgement) goes through the writer thread, so a slow, locked or
full disk never delays a tick nor hides an alarm.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from controller.opsdb import Actor, OpsDB
from controller.record import TickRecord
from controller.writer import Writer

log = logging.getLogger("gridpilot.alarms")
HOLD_S = 1.0  # a condition must hold (or be gone) this long before the alarm changes
SOC_MARGIN = 0.05  # SoC within this of its floor: near the reserve


@dataclass(frozen=True)
class Condition:
    key: str  # stable: one alarm per key while it lasts
    severity: str  # critical, warning, info
    message: str


@dataclass(frozen=True)
class Alarm:
    id: int
    key: str
    severity: str
    message: str
    raised_at: float  # unix time
    cleared_at: float | None = None
    acked_at: float | None = None
    acked_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
        if command is not None and command.fallback:
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
    def __init__(self, db: OpsDB, writer: Writer) -> None:
        self.db, self.writer = db, writer
        self._lock = threading.Lock()  # memory only: the tick raises, the API acknowledges
        stored = db.alarms(active_only=True)
        self._active: dict[str, Alarm] = {
            a["key"]: Alarm(**{k: a[k] for k in Alarm.__dataclass_fields__}) for a in stored
        }
        self._next_id = db.max_alarm_id() + 1
        self.raised_total = 0  # since start
        self.active: tuple[Alarm, ...] = tuple(self._active.values())  # what readers see
        self._seen: dict[str, float] = {}  # key → since when it holds (not yet raised)
        self._gone: dict[str, float] = {}  # key → since when it is gone (not yet cleared)

    def update(self, rec: TickRecord) -> None:
        now = rec.monotonic
        present = {c.key: c for c in conditions(rec)}
        changed = False
        for key, c in present.items():
            self._gone.pop(key, None)
            if key in self._active:
                continue
            since = self._seen.setdefault(key, now)
            if now - since >= HOLD_S:
                self._raise(c)
                self._seen.pop(key)
                changed = True
        for key in list(self._seen):
            if key not in present:
                del self._seen[key]
        for key in list(self._active):
            if key in present:
                continue
            since = self._gone.setdefault(key, now)
            if now - since >= HOLD_S:
                self._clear(key)
                del self._gone[key]
                changed = True
        if changed:
            with self._lock:
                self.active = tuple(self._active.values())

    def _raise(self, c: Condition) -> None:
        with self._lock:
            alarm = Alarm(self._next_id, c.key, c.severity, c.message, time.time())
            self._next_id += 1
            self.raised_total += 1
            self._active[c.key] = alarm
        log.warning("alarm", extra={"alarm": c.key, "severity": c.severity, "id": alarm.id})
        self.writer.put(lambda: self.db.store_alarm(alarm.to_json()), f"alarm {alarm.id} raise")

    def _clear(self, key: str) -> None:
        with self._lock:
            alarm = self._active.pop(key)
        at = time.time()
        log.info("alarm cleared", extra={"alarm": key, "id": alarm.id})
        self.writer.put(lambda: self.db.clear_alarm(alarm.id, at), f"alarm {alarm.id} clear")

    def acknowledge(self, alarm_id: int, by: Actor) -> Alarm | None:
        """An active alarm acknowledged in memory at once (stored by the writer, in order
        after its raise); None if no active alarm has that id."""
        with self._lock:
            alarm = next((a for a in self._active.values() if a.id == alarm_id), None)
            if alarm is None:
                return None
            if alarm.acked_at is None:
                alarm = replace(alarm, acked_at=time.time(), acked_by=by.label)
                self._active[alarm.key] = alarm
                self.active = tuple(self._active.values())
                acked = alarm
                self.writer.put(
                    lambda: self.db.ack_alarm(acked.id, by, acked.acked_at),
                    f"alarm {alarm.id} ack",
                )
            return alarm
