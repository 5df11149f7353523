"""What operators set: setpoints (with an optional time-to-live), the control mode and
demand-response events; from them, the dispatch settings in force at each tick.

Every change is validated before anything changes, persisted, and audited with who did it,
the old and the new value, including the reverts and event starts and ends the controller
makes on its own (as "system").
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.config import DispatchConfig, SiteConfig
from controller.opsdb import SYSTEM, Actor, OpsDB

log = logging.getLogger("gridpilot.operations")
Mode = Literal["auto", "manual", "safe"]
MAX_EVENT_S = 7 * 86400.0


class Setpoints(BaseModel):
    """Everything an operator may set, each with its bounds (the API's schema says them)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    ramp_up_w_per_s: float = Field(gt=0, le=1e9, description="grid ramp limit upward, W/s")
    ramp_down_w_per_s: float = Field(gt=0, le=1e9, description="grid ramp limit downward, W/s")
    soc_target_low_ratio: float = Field(ge=0, le=1, description="SoC band the battery returns to")
    soc_target_high_ratio: float = Field(ge=0, le=1)
    soc_min_ratio: float = Field(ge=0, le=1, description="reserve: never discharged below")
    ride_through_s: float = Field(ge=0, le=7200, description="UPS reserve: s of full load")
    import_cap_w: float | None = Field(gt=0, le=1e10, description="peak limit on import, W")
    droop: float = Field(gt=0, le=1, description="per unit deviation for full response")
    deadband_hz: float = Field(ge=0, le=1, description="frequency deadband, Hz")
    supply_temperature_c: float = Field(ge=15, le=60, description="CDU supply setpoint, °C")
    heat_reuse_mode: Literal["off", "on"] = Field(description="serve the heat consumer")
    heat_reuse_request_w: float = Field(ge=0, le=1e9, description="heat the consumer asks, W")
    heat_reuse_min_temperature_c: float = Field(
        ge=20, le=90, description="the consumer needs its heat at least this hot, °C"
    )
    manual_battery_w: float = Field(
        ge=-1e9, le=1e9, description="manual mode: total battery power, W (+ = discharge)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> Setpoints:
        if self.soc_target_low_ratio > self.soc_target_high_ratio:
            raise ValueError("soc_target_low_ratio must not exceed soc_target_high_ratio")
        if self.soc_min_ratio > self.soc_target_low_ratio:
            raise ValueError("soc_min_ratio must not exceed soc_target_low_ratio")
        return self


DISPATCH_FIELDS = (
    "ramp_up_w_per_s", "ramp_down_w_per_s", "soc_target_low_ratio", "soc_target_high_ratio",
    "soc_min_ratio", "ride_through_s", "import_cap_w", "droop", "deadband_hz",
)  # fmt: skip


def initial_setpoints(site: SiteConfig) -> Setpoints:
    d = site.dispatch
    return Setpoints(
        **{f: getattr(d, f) for f in DISPATCH_FIELDS},
        supply_temperature_c=32.0,
        heat_reuse_mode="off",
        heat_reuse_request_w=0.0,
        heat_reuse_min_temperature_c=45.0,
        manual_battery_w=0.0,
    )


class EventIn(BaseModel):
    """A demand-response event: an import cap, or a load to shed, from start to end."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    kind: Literal["import_cap", "shed"]
    value_w: float = Field(gt=0, le=1e10, description="the cap, or the load to shed, W")
    start_s: float = Field(ge=0, le=1e11, description="unix time it starts")
    end_s: float = Field(ge=0, le=1e11, description="unix time it ends")

    @model_validator(mode="after")
    def _span(self) -> EventIn:
        if self.end_s <= self.start_s:
            raise ValueError("end_s must be after start_s")
        if self.end_s - self.start_s > MAX_EVENT_S:
            raise ValueError(f"an event lasts at most {MAX_EVENT_S:.0f} s")
        if self.end_s <= time.time():
            raise ValueError("end_s is in the past")
        return self


@dataclass(frozen=True)
class InForce:
    """What a tick runs with."""

    mode: Mode
    dispatch: DispatchConfig
    setpoints: Setpoints
    shed_w: float  # from shed events: load the site should shed now
    events: tuple[int, ...]  # ids of the events in force


class Operations:
    def __init__(self, site: SiteConfig, db: OpsDB) -> None:
        self.site, self.db = site, db
        self._lock = threading.Lock()
        saved = db.get_setting("setpoints")
        base = initial_setpoints(site).model_dump()
        self.setpoints = Setpoints(**{**base, **(saved or {})})
        self.mode: Mode = db.get_setting("mode") or "auto"
        self.override: dict[str, Any] | None = db.get_setting("override")
        self.mode_override: dict[str, Any] | None = db.get_setting("mode_override")
        self._reload_events()

    def _reload_events(self) -> None:
        """Every event (for the API), and those a tick must still look at: not yet ended,
        and not cancelled or over before they ever started. The ticks scan only those."""
        self._events = self.db.events()
        now = time.time()
        self._pending = [
            e
            for e in self._events
            if e["ended_at"] is None
            and (e["started_at"] is not None or (e["cancelled_at"] is None and e["end_s"] > now))
        ]

    # --- changes (API) ------------------------------------------------------------------
    def change_setpoints(
        self, update: dict[str, Any], by: Actor, ttl_s: float | None, replace: bool = False
    ) -> Setpoints:
        """Validate the whole result first: a rejected change changes nothing."""
        with self._lock:
            old = self.setpoints
            merged = update if replace else {**old.model_dump(), **update}
            new = Setpoints(**merged)  # raises ValidationError, nothing changed
            if ttl_s is not None:
                # A manual override: back to what was before it, when it expires.
                previous = (self.override or {}).get("previous", old.model_dump())
                self.override = {"previous": previous, "expires_s": time.time() + ttl_s}
            else:
                self.override = None
            self.setpoints = new
            self.db.put_setting("setpoints", new.model_dump())
            self.db.put_setting("override", self.override)
            self.db.audit(by, "setpoints.change", *_diff(old, new))
            if ttl_s is not None:
                self.db.audit(by, "setpoints.ttl", None, {"ttl_s": ttl_s})
            return new

    def change_mode(self, mode: Mode, by: Actor, ttl_s: float | None) -> Mode:
        with self._lock:
            old = self.mode
            self.mode_override = (
                {"previous": old, "expires_s": time.time() + ttl_s} if ttl_s is not None else None
            )
            self.mode = mode
            self.db.put_setting("mode", mode)
            self.db.put_setting("mode_override", self.mode_override)
            self.db.audit(by, "mode.change", old, {"mode": mode, "ttl_s": ttl_s})
            return mode

    def add_event(self, event: EventIn, by: Actor) -> dict[str, Any]:
        with self._lock:
            event_id = self.db.add_event(event.kind, event.value_w, event.start_s, event.end_s, by)
            self._reload_events()
            row = self.db.event(event_id)
            self.db.audit(by, "event.create", None, row)
            return row  # type: ignore[return-value]

    def cancel_event(self, event_id: int, by: Actor) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.event(event_id)
            if row is None or row["cancelled_at"] is not None:
                return None
            self.db.mark_event(event_id, "cancelled_at")
            self._reload_events()
            self.db.audit(by, "event.cancel", row, self.db.event(event_id))
            return self.db.event(event_id)

    def events(self) -> list[dict[str, Any]]:
        return list(self._events)

    # --- each tick ----------------------------------------------------------------------
    def in_force(self, now_s: float) -> InForce:
        """Expire overrides, start and end events on time (each audited once), and say what
        the tick runs with. Overlapping events resolve to the strictest."""
        with self._lock:
            self._expire(now_s)
            cap, shed, active = math.inf, 0.0, []
            for e in self._pending:
                running = e["cancelled_at"] is None and e["start_s"] <= now_s < e["end_s"]
                if running and e["started_at"] is None:
                    self._event_edge(e, "started_at", "event.start")
                if not running and e["started_at"] is not None and e["ended_at"] is None:
                    self._event_edge(e, "ended_at", "event.end")  # over, or cancelled
                if running:
                    active.append(e["id"])
                    if e["kind"] == "import_cap":
                        cap = min(cap, e["value_w"])
                    else:
                        shed = max(shed, e["value_w"])
            sp = self.setpoints
            fields = {f: getattr(sp, f) for f in DISPATCH_FIELDS}
            if math.isfinite(cap):
                fields["import_cap_w"] = min(cap, sp.import_cap_w or math.inf)
            return InForce(
                self.mode, self.site.dispatch.model_copy(update=fields), sp, shed, tuple(active)
            )

    def _event_edge(self, e: dict[str, Any], column: str, action: str) -> None:
        self.db.mark_event(e["id"], column)  # type: ignore[arg-type]
        self.db.audit(
            SYSTEM, action, None, {"id": e["id"], "kind": e["kind"], "value_w": e["value_w"]}
        )
        log.info(action.replace(".", " "), extra={"event": e["id"], "kind": e["kind"]})
        self._reload_events()

    def _expire(self, now_s: float) -> None:
        if self.override is not None and now_s >= self.override["expires_s"]:
            old = self.setpoints
            self.setpoints = Setpoints(**self.override["previous"])
            self.override = None
            self.db.put_setting("setpoints", self.setpoints.model_dump())
            self.db.put_setting("override", None)
            self.db.audit(SYSTEM, "setpoints.revert", *_diff(old, self.setpoints))
        if self.mode_override is not None and now_s >= self.mode_override["expires_s"]:
            old_mode, self.mode = self.mode, self.mode_override["previous"]
            self.mode_override = None
            self.db.put_setting("mode", self.mode)
            self.db.put_setting("mode_override", None)
            self.db.audit(SYSTEM, "mode.revert", old_mode, self.mode)


def _diff(old: Setpoints, new: Setpoints) -> tuple[dict[str, Any], dict[str, Any]]:
    a, b = old.model_dump(), new.model_dump()
    changed = [k for k in a if a[k] != b[k]]
    return {k: a[k] for k in changed}, {k: b[k] for k in changed}
