"""What operators set: setpoints (with an optional time-to-live), the control mode and
demand-response events; from them, the settings in force at each tick.

Everything operators set is one immutable value (`OperatorState`), swapped whole when it
changes. An API change is validated first (a rejected change changes nothing), persisted and
audited, then swapped in. A tick reads the value without a lock and works out what is in force
now: expired overrides revert and events start and end on time *in that answer*, at once; the
record of each such edge (audit, event rows, the reverted setpoints) goes to the writer thread,
which the tick never waits on, and which then folds the edge into the value.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.config import DispatchConfig, SiteConfig
from controller.opsdb import SYSTEM, Actor, OpsDB
from controller.record import InForce
from controller.setpoints import Mode, Setpoints, dispatch_config, initial_setpoints
from controller.writer import Writer

log = logging.getLogger("gridpilot.operations")
MAX_EVENT_S = 7 * 86400.0


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
class Event:
    id: int
    kind: str
    value_w: float
    start_s: float
    end_s: float
    started: bool  # the controller has recorded its start
    cancelled: bool

    def running(self, now_s: float) -> bool:
        return not self.cancelled and self.start_s <= now_s < self.end_s


@dataclass(frozen=True)
class Revert:
    previous: dict[str, Any]  # what was in force before, restored at expiry
    expires_s: float


@dataclass(frozen=True)
class OperatorState:
    setpoints: Setpoints
    dispatch: DispatchConfig  # the site's dispatch with the setpoints, validated whole
    mode: Mode
    override: Revert | None  # setpoints given with a TTL
    mode_override: Revert | None  # mode given with a TTL ({"mode": ...})
    pending: tuple[Event, ...]  # events not yet ended: the only ones a tick looks at


Edge = tuple[str, object]  # ("setpoints.revert", Revert) / ("event.start", Event) / ...


class Operations:
    def __init__(self, site: SiteConfig, db: OpsDB, writer: Writer | None = None) -> None:
        self.site, self.db = site, db
        self.writer = writer or Writer("operations")
        self._lock = threading.Lock()  # API changes and the writer's edges; never the tick
        self._handed: set[tuple[str, int | float]] = set()  # edges given to the writer
        self._capped: tuple[DispatchConfig, float, DispatchConfig] | None = None
        setpoints = self._saved_setpoints()
        self._value = OperatorState(
            setpoints=setpoints,
            dispatch=dispatch_config(site, setpoints),
            mode=db.get_setting("mode") or "auto",
            override=self._saved_override(),
            mode_override=_mode_revert(db.get_setting("mode_override")),
            pending=(),
        )
        self._reload_events()

    def _saved_setpoints(self) -> Setpoints:
        """The setpoints saved before a restart, if the site still accepts them whole."""
        base = initial_setpoints(self.site)
        saved = self.db.get_setting("setpoints")
        if not saved:
            return base
        try:
            setpoints = Setpoints(**{**base.model_dump(), **saved})
            dispatch_config(self.site, setpoints)
            return setpoints
        except ValidationError as exc:
            log.error(
                "saved setpoints refused; the site file's are in force",
                extra={"errors": "; ".join(e["msg"] for e in exc.errors())},
            )
            return base

    def _saved_override(self) -> Revert | None:
        """A pending revert saved before a restart, if what it restores is still valid."""
        revert = _revert(self.db.get_setting("override"))
        if revert is None:
            return None
        try:
            dispatch_config(self.site, Setpoints(**revert.previous))
        except (ValidationError, TypeError) as exc:
            log.error("saved revert refused; the override stays", extra={"error": str(exc)})
            return None
        return revert

    # --- what readers see ---------------------------------------------------------------
    @property
    def setpoints(self) -> Setpoints:
        return self._value.setpoints

    @property
    def mode(self) -> Mode:
        return self._value.mode

    @property
    def override(self) -> dict[str, Any] | None:
        o = self._value.override
        return None if o is None else {"previous": o.previous, "expires_s": o.expires_s}

    @property
    def mode_override(self) -> dict[str, Any] | None:
        o = self._value.mode_override
        return None if o is None else {"previous": o.previous["mode"], "expires_s": o.expires_s}

    def events(self) -> list[dict[str, Any]]:
        return list(self._events)

    def _reload_events(self) -> None:
        """Every event (for the API) and those a tick must still look at: not yet ended, and
        not cancelled or over before they ever started. Call with the lock held (or alone)."""
        self._events = self.db.events()
        now = time.time()
        pending = tuple(
            Event(
                e["id"],
                e["kind"],
                e["value_w"],
                e["start_s"],
                e["end_s"],
                started=e["started_at"] is not None,
                cancelled=e["cancelled_at"] is not None,
            )
            for e in self._events
            if e["ended_at"] is None
            and (e["started_at"] is not None or (e["cancelled_at"] is None and e["end_s"] > now))
        )
        self._value = replace(self._value, pending=pending)

    # --- changes (API threads) -----------------------------------------------------------
    def change_setpoints(
        self, update: dict[str, Any], by: Actor, ttl_s: float | None, replace_all: bool = False
    ) -> Setpoints:
        """Validate the whole result first (the setpoints, then the dispatch configuration they
        make with the site's): a rejected change changes nothing; a change that changes
        nothing is neither stored nor audited.

        With `ttl_s`, the change is temporary: when it expires, the setpoints go back to what
        was in force before it (a temporary change made while another is pending takes the
        later expiry, and goes back to what was before the first). Without it, the change is
        permanent for the fields it names; a pending revert still restores the others on
        time (it no longer makes them permanent), so what it will restore must be valid as a
        whole with this change, or the change is refused."""
        with self._lock:
            value = self._settle(time.time())
            old = value.setpoints
            new = Setpoints(**(update if replace_all else {**old.model_dump(), **update}))
            dispatch = dispatch_config(self.site, new)  # raises ValidationError, nothing changed
            if new == old:
                return old
            override = None
            if ttl_s is not None:
                # A manual override: back to what was before it, when it expires.
                previous = value.override.previous if value.override else old.model_dump()
                override = Revert(previous, time.time() + ttl_s)
            elif value.override is not None:
                changed = _diff(old, new)[1]
                restored = {**value.override.previous, **changed}
                dispatch_config(self.site, Setpoints(**restored))  # the revert stays valid
                if restored != new.model_dump():
                    override = Revert(restored, value.override.expires_s)
            self.db.put_setting("setpoints", new.model_dump())
            self.db.put_setting("override", _saved(override))
            self.db.audit(by, "setpoints.change", *_diff(old, new))
            if ttl_s is not None:
                self.db.audit(by, "setpoints.ttl", None, {"ttl_s": ttl_s})
            self._value = replace(value, setpoints=new, dispatch=dispatch, override=override)
            return new

    def change_mode(self, mode: Mode, by: Actor, ttl_s: float | None) -> Mode:
        with self._lock:
            value = self._settle(time.time())
            override = (
                Revert({"mode": value.mode}, time.time() + ttl_s) if ttl_s is not None else None
            )
            self.db.put_setting("mode", mode)
            self.db.put_setting("mode_override", _saved(override))
            self.db.audit(by, "mode.change", value.mode, {"mode": mode, "ttl_s": ttl_s})
            self._value = replace(value, mode=mode, mode_override=override)
            return mode

    def add_event(self, event: EventIn, by: Actor) -> dict[str, Any]:
        with self._lock:
            event_id = self.db.add_event(event.kind, event.value_w, event.start_s, event.end_s, by)
            row = self.db.event(event_id)
            self.db.audit(by, "event.create", None, row)
            self._reload_events()
            return row  # type: ignore[return-value]

    def cancel_event(self, event_id: int, by: Actor) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.event(event_id)
            if row is None or row["cancelled_at"] is not None:
                return None
            self.db.mark_event(event_id, "cancelled_at")
            self.db.audit(by, "event.cancel", row, self.db.event(event_id))
            self._reload_events()
            return self.db.event(event_id)

    # --- each tick (no lock, no disk) -----------------------------------------------------
    def in_force(self, now_s: float) -> InForce:
        """What the tick runs with now: expired overrides reverted, events started and ended
        on time, overlapping events resolved to the strictest. Each edge is handed once to the
        writer, which records it and folds it into the value."""
        value = self._value
        expired = self._expired(value, now_s)
        for action, revert in expired:
            self._hand((action, revert.expires_s), revert)
        setpoints, mode, dispatch = value.setpoints, value.mode, value.dispatch
        if expired:
            value = self._reverted(value, expired)
            setpoints, mode, dispatch = value.setpoints, value.mode, value.dispatch
        cap, shed, active = math.inf, 0.0, []
        for e in value.pending:
            running = e.running(now_s)
            if running and not e.started:
                self._hand(("event.start", e.id), e)
            if not running and (e.started or ("event.start", e.id) in self._handed):
                self._hand(("event.end", e.id), e)  # over, or cancelled
            if running:
                active.append(e.id)
                if e.kind == "import_cap":
                    cap = min(cap, e.value_w)
                else:
                    shed = max(shed, e.value_w)
        if math.isfinite(cap) and cap < (dispatch.import_cap_w or math.inf):
            dispatch = self._with_cap(dispatch, cap)
        return InForce(mode, dispatch, setpoints, shed, tuple(active))

    def _with_cap(self, dispatch: DispatchConfig, cap_w: float) -> DispatchConfig:
        """The dispatch with an event's cap (EventIn bounds it as import_cap_w is bounded);
        made once per change, not every tick (the cache holds the settings it was made from,
        so it is compared by identity, never by an id a new object may reuse)."""
        cached = self._capped
        if cached is None or cached[0] is not dispatch or cached[1] != cap_w:
            cached = self._capped = (
                dispatch,
                cap_w,
                dispatch.model_copy(update={"import_cap_w": cap_w}),
            )
        return cached[2]

    @staticmethod
    def _expired(value: OperatorState, now_s: float) -> list[tuple[str, Revert]]:
        """The overrides whose time is up: ("setpoints.revert" | "mode.revert", revert)."""
        out = []
        if value.override is not None and now_s >= value.override.expires_s:
            out.append(("setpoints.revert", value.override))
        if value.mode_override is not None and now_s >= value.mode_override.expires_s:
            out.append(("mode.revert", value.mode_override))
        return out

    def _reverted(self, value: OperatorState, expired: list[tuple[str, Revert]]) -> OperatorState:
        """`value` with these overrides reverted (their `previous` was checked at load or
        when made, so this cannot fail)."""
        for action, revert in expired:
            if action == "setpoints.revert":
                restored = Setpoints(**revert.previous)
                value = replace(
                    value,
                    setpoints=restored,
                    dispatch=dispatch_config(self.site, restored),
                    override=None,
                )
            else:
                value = replace(value, mode=revert.previous["mode"], mode_override=None)
        return value

    def _settle(self, now_s: float) -> OperatorState:
        """With the lock held (an API change): first record and apply the reverts that are
        due, so a change is made on what is in force, never on an expired override."""
        for action, revert in self._expired(self._value, now_s):
            self._fold(action, revert)
        return self._value

    def _hand(self, edge: tuple[str, int | float], item: object) -> None:
        if edge in self._handed:
            return
        self._handed.add(edge)
        action = edge[0]
        log.info(action.replace(".", " "), extra={"edge": str(edge[1])})
        self.writer.put(lambda: self._record_edge(action, item), f"operations {action}")

    # --- the writer's side ----------------------------------------------------------------
    def _record_edge(self, action: str, item: object) -> None:
        """The writer's job for an edge a tick saw: record it, fold it into the value."""
        with self._lock:
            self._fold(action, item)

    def _fold(self, action: str, item: object) -> None:
        """With the lock held: persist and audit an edge, and swap the value to include it.
        A revert an operator's change has made moot is skipped."""
        value = self._value
        if action in ("setpoints.revert", "mode.revert"):
            current = value.override if action == "setpoints.revert" else value.mode_override
            if current is not item:
                return  # an operator changed it since: nothing to revert
            new = self._reverted(value, [(action, item)])
            if action == "setpoints.revert":
                self.db.put_setting("setpoints", new.setpoints.model_dump())
                self.db.put_setting("override", None)
                self.db.audit(SYSTEM, action, *_diff(value.setpoints, new.setpoints))
            else:
                self.db.put_setting("mode", new.mode)
                self.db.put_setting("mode_override", None)
                self.db.audit(SYSTEM, action, value.mode, new.mode)
            self._value = new
            return
        assert isinstance(item, Event)
        column = "started_at" if action == "event.start" else "ended_at"
        self.db.mark_event(item.id, column)  # type: ignore[arg-type]
        self.db.audit(
            SYSTEM, action, None, {"id": item.id, "kind": item.kind, "value_w": item.value_w}
        )
        self._reload_events()


def _revert(saved: dict[str, Any] | None) -> Revert | None:
    if saved is None:
        return None
    previous = saved["previous"]
    return Revert(
        previous if isinstance(previous, dict) else {"mode": previous}, saved["expires_s"]
    )


def _mode_revert(saved: dict[str, Any] | None) -> Revert | None:
    revert = _revert(saved)
    if revert is not None and revert.previous.get("mode") not in get_args(Mode):
        log.error("saved mode revert refused", extra={"previous": str(revert.previous)})
        return None
    return revert


def _saved(r: Revert | None) -> dict[str, Any] | None:
    """As stored: the mode's revert keeps its previous mode as a plain string."""
    if r is None:
        return None
    previous: Any = r.previous["mode"] if set(r.previous) == {"mode"} else r.previous
    return {"previous": previous, "expires_s": r.expires_s}


def _diff(old: Setpoints, new: Setpoints) -> tuple[dict[str, Any], dict[str, Any]]:
    a, b = old.model_dump(), new.model_dump()
    changed = [k for k in a if a[k] != b[k]]
    return {k: a[k] for k in changed}, {k: b[k] for k in changed}
