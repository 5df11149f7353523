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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from controller.opsdb import Actor, OpsDB
from controller.record import TickRecord
from controller.snapshot import DeviceSnapshot
from controller.writer import Writer
from drivers.kinds import required_roles

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


def storage_conditions(writers: Sequence[Writer]) -> list[Condition]:
    """A writer held by a storage fault: control goes on, but what it should keep waits."""
    return [
        Condition(
            f"storage_failing:{w.name}",
            "critical",
            f"storage failing ({w.name}): {w.pending} writes held and retried; {w.last_error}",
        )
        for w in writers
        if w.failing
    ]


def invalid_roles(dev: DeviceSnapshot) -> list[str]:
    """The roles the controller needs of a device whose fresh values are invalid."""
    return [
        role
        for role in required_roles(dev.kind)
        if (r := dev.role_reading(role)) is not None and not r.valid and not r.stale
    ]


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
        elif dev.frozen:
            found.append(
                Condition(f"device_frozen:{dev.id}", "warning",
                          f"{dev.id} answers, but its own heartbeat stands still: its data "
                          "are old and not used")
            )  # fmt: skip
        elif bad := invalid_roles(dev):
            found.append(
                Condition(f"device_invalid:{dev.id}", "warning",
                          f"{dev.id} shows values that cannot be used (not a number, or "
                          f"outside its map's range): {', '.join(bad)}")
            )  # fmt: skip
    for device, command in rec.cooling.items():
        if command is not None and command.fallback:
            found.append(
                Condition(f"cooling_fallback:{device}", "critical",
                          f"{device}: telemetry stale or invalid; pumps at safe speed, "
                          "lowest supply setpoint")
            )  # fmt: skip
    if (link := rec.grid_link) is not None and link.alarming(rec.wall_time):
        found.append(
            Condition("openadr_unreachable", "warning",
                      f"VTN {link.vtn_url} out of reach for {link.out_for_s(rec.wall_time):.0f} s "
                      f"({link.last_error}); the events received stay in force until they end")
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
    """The alarms, in memory first. `active` (a tuple swapped whole) and `recent` (the last
    alarms raised, cleared or acknowledged, as they stand) are what readers see; every change
    is handed to the writer under the same lock, so the file gets them in order."""

    RECENT = 500

    def __init__(self, db: OpsDB, writer: Writer, watched: Sequence[Writer] = ()) -> None:
        self.db, self.writer, self.watched = db, writer, watched
        self._lock = threading.Lock()  # memory only: the tick raises, the API acknowledges
        stored = db.alarms(active_only=True)
        self._active: dict[str, Alarm] = {
            a["key"]: Alarm(**{k: a[k] for k in Alarm.__dataclass_fields__}) for a in stored
        }
        self._recent: dict[int, Alarm] = {a.id: a for a in self._active.values()}
        self._next_id = db.max_alarm_id() + 1
        self.raised_total = 0  # since start
        self.active: tuple[Alarm, ...] = tuple(self._active.values())
        self._seen: dict[str, float] = {}  # key → since when it holds (not yet raised)
        self._gone: dict[str, float] = {}  # key → since when it is gone (not yet cleared)

    @property
    def recent(self) -> tuple[Alarm, ...]:
        with self._lock:
            return tuple(self._recent.values())

    def update(self, rec: TickRecord) -> None:
        now = rec.monotonic
        present = {c.key: c for c in conditions(rec) + storage_conditions(self.watched)}
        for key, c in present.items():
            self._gone.pop(key, None)
            if key in self._active:
                continue
            since = self._seen.setdefault(key, now)
            if now - since >= HOLD_S:
                self._raise(c)
                self._seen.pop(key)
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

    def _changed(self, alarm: Alarm, job: Callable[[], object], what: str) -> None:
        """With the lock held: the alarm as it now stands, for readers and for the file."""
        if alarm.cleared_at is None:
            self._active[alarm.key] = alarm
        else:
            self._active.pop(alarm.key, None)
        self.active = tuple(self._active.values())
        self._recent.pop(alarm.id, None)
        self._recent[alarm.id] = alarm
        while len(self._recent) > self.RECENT:
            del self._recent[next(iter(self._recent))]
        self.writer.put(job, f"alarm {alarm.id} {what}")

    def _raise(self, c: Condition) -> None:
        with self._lock:
            alarm = Alarm(self._next_id, c.key, c.severity, c.message, time.time())
            self._next_id += 1
            self.raised_total += 1
            self._changed(alarm, lambda: self.db.store_alarm(alarm.to_json()), "raise")
        log.warning("alarm", extra={"alarm": c.key, "severity": c.severity, "id": alarm.id})

    def _clear(self, key: str) -> None:
        with self._lock:
            alarm = replace(self._active[key], cleared_at=time.time())
            self._changed(alarm, lambda: self.db.clear_alarm(alarm.id, alarm.cleared_at), "clear")
        log.info("alarm cleared", extra={"alarm": key, "id": alarm.id})

    def acknowledge(self, alarm_id: int, by: Actor) -> Alarm | None:
        """An alarm raised or changed since start, acknowledged in memory at once and stored
        (with its audit entry) by the writer, after its raise; None if memory does not hold
        it (an older one: the caller looks in the file)."""
        with self._lock:
            alarm = self._recent.get(alarm_id)
            if alarm is None or alarm.acked_at is not None:
                return alarm
            acked = replace(alarm, acked_at=time.time(), acked_by=by.label)
            # Stored with its audit entry in one transaction, by the writer, after the raise.
            self._changed(acked, lambda: self.db.ack_alarm(acked.id, by, acked.acked_at), "ack")
            return acked
