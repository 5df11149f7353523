"""What operators set: setpoints (with an optional time-to-live), the control mode and
demand-response events; from them, and from the workload notices pending, the settings in
force at each tick.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.config import MAX_POWER_W, MIN_POWER_W, DispatchConfig, SiteConfig
from controller.notices import NoticeBoard
from controller.opsdb import SYSTEM, Actor, OpsDB, Origin, check_bound
from controller.record import InForce
from controller.setpoints import Mode, Setpoints, dispatch_config, initial_setpoints
from controller.temporary import (
    Layer,
    as_saved,
    check_future,
    effective,
    mode_of,
    pending_after,
    without,
)
from controller.writer import Writer

log = logging.getLogger("gridpilot.operations")
MAX_EVENT_S = 7 * 86400.0
CAP_LEAD_S = 2.0  # an import cap is reached this long before its start (the meter's lag)


class EventIn(BaseModel):
    """A demand-response event: an import cap, or a load to shed, from start to end."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    kind: Literal["import_cap", "shed"]
    value_w: float = Field(
        ge=MIN_POWER_W,
        le=MAX_POWER_W,
        description="the cap, or the load to shed, W (at least 1 kW)",
    )
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

    def planned_or_running(self, now_s: float) -> bool:
        return not self.cancelled and now_s < self.end_s


def event_of(row: dict[str, Any]) -> Event:
    return Event(
        row["id"],
        row["kind"],
        row["value_w"],
        row["start_s"],
        row["end_s"],
        started=row["started_at"] is not None,
        cancelled=row["cancelled_at"] is not None,
    )


def approach_w(event: Event, now_s: float, ramp_down_w_per_s: float) -> float:
    """An import cap not yet started, as a cap that falls at the grid's ramp limit to reach
    the event's value `CAP_LEAD_S` before its start: the draw is under the cap from its start
    (an event announced too late for that is reached at the ramp limit after it). Applied
    from twice the cap on: a draw above that reaches the cap after its start."""
    return event.value_w + ramp_down_w_per_s * max(0.0, event.start_s - now_s - CAP_LEAD_S)


def _in_order(events: Iterable[Event]) -> tuple[Event, ...]:
    """As a tick goes through them: by start, then as made."""
    return tuple(sorted(events, key=lambda e: (e.start_s, e.id)))


@dataclass(frozen=True)
class OperatorState:
    setpoints: Setpoints  # in force: the permanent ones with the temporary layers over them
    dispatch: DispatchConfig  # the site's dispatch with the setpoints, validated whole
    mode: Mode  # in force: the newest temporary mode, else the permanent one
    permanent: Setpoints  # what stays when every temporary change has gone
    layers: tuple[Layer, ...]  # temporary changes, oldest first, each reverting on its time
    mode_base: Mode  # the mode that stays when every temporary one has gone
    mode_layers: tuple[Layer, ...]  # temporary modes ({"mode": ...}), oldest first
    pending: tuple[Event, ...]  # events not yet ended: the only ones a tick looks at


class Operations:
    def __init__(self, site: SiteConfig, db: OpsDB, writer: Writer | None = None) -> None:
        self.site, self.db = site, db
        self.writer = writer or Writer("operations")
        self._lock = threading.Lock()  # API changes and the writer's edges; never the tick
        # Edges handed to the writer and not yet folded: a layer or revert by identity (held
        # here, so its id cannot be reused meanwhile), an event by id; dropped once folded.
        self._handed: dict[tuple[str, int], object] = {}
        self._capped: tuple[DispatchConfig, float, DispatchConfig] | None = None
        # Whether this node records the edges its ticks see (reverts, events starting and
        # ending): always, but in an HA pair only the leader; a standby gets them from it.
        self.records: Callable[[], bool] = lambda: True
        self.notices = NoticeBoard(db, site.notices, site.limits.max_pending_notices)
        self._value = self._saved()

    def _saved(self) -> OperatorState:
        """The operators' state as the file holds it."""
        permanent, layers = self._saved_setpoints()
        setpoints = effective(permanent, layers)
        mode_base, mode_layers = self._saved_mode()
        return OperatorState(
            setpoints=setpoints,
            dispatch=dispatch_config(self.site, setpoints),
            mode=mode_of(mode_base, mode_layers),
            permanent=permanent,
            layers=layers,
            mode_base=mode_base,
            mode_layers=mode_layers,
            pending=_in_order(event_of(row) for row in self.db.pending_events(time.time())),
        )

    def reload(self) -> None:
        """Take the file's state as the one in force (an HA standby, once the leader's changes
        are copied into its file; a new leader, before its first write)."""
        with self._lock:
            self._value = self._saved()
            self.notices.reload()

    def _saved_mode(self) -> tuple[Mode, tuple[Layer, ...]]:
        """The permanent mode and the temporary ones saved before a restart (an unknown mode
        is refused with a log line: auto, with no temporary mode)."""
        modes = get_args(Mode)
        base = self.db.get_setting("mode_base")
        saved_layers = self.db.get_setting("mode_layers")
        layers: tuple[Layer, ...] = ()
        if base is None:  # as saved before temporary modes were layers
            base = self.db.get_setting("mode") or "auto"
            if (old := self.db.get_setting("mode_override")) is not None:
                layers = (Layer({"mode": base}, old["expires_s"]),)
                base = old["previous"]
        elif saved_layers:
            layers = tuple(Layer(**x) for x in saved_layers)
        if base not in modes or any(x.changes.get("mode") not in modes for x in layers):
            log.error("saved mode refused; auto is in force", extra={"mode": str(base)})
            return "auto", ()
        return base, layers

    def _saved_setpoints(self) -> tuple[Setpoints, tuple[Layer, ...]]:
        """The permanent setpoints and the temporary changes saved before a restart, as far as
        the site still accepts them whole (else the site file's, and no temporary change)."""
        base = initial_setpoints(self.site).model_dump()
        saved = self.db.get_setting("setpoints") or {}
        permanent = self.db.get_setting("setpoints_permanent")
        try:
            layers = tuple(Layer(**x) for x in self.db.get_setting("setpoint_layers") or [])
        except TypeError as exc:
            log.error("saved temporary changes unreadable", extra={"error": str(exc)})
            layers = ()
        if permanent is None:  # as saved before temporary changes were layers
            permanent = saved
            if (old := self.db.get_setting("override")) is not None:
                permanent = old["previous"]
                changes = {k: v for k, v in saved.items() if old["previous"].get(k) != v}
                layers = (Layer(changes, old["expires_s"]),) if changes else ()
        try:
            setpoints = Setpoints(**{**base, **permanent})
            dispatch_config(self.site, setpoints)
        except (ValidationError, TypeError) as exc:
            log.error("saved setpoints refused; the site file's are in force",
                      extra={"error": str(exc)})  # fmt: skip
            return Setpoints(**base), ()
        try:
            check_future(self.site, setpoints, layers)
        except (ValidationError, TypeError) as exc:
            log.error("saved temporary changes refused", extra={"error": str(exc)})
            layers = ()
        return setpoints, layers

    # --- what readers see ---------------------------------------------------------------
    @property
    def setpoints(self) -> Setpoints:
        return self._value.setpoints

    @property
    def mode(self) -> Mode:
        return self._value.mode

    @property
    def override(self) -> dict[str, Any] | None:
        """The temporary changes pending: what stays when they have all gone (`previous`),
        when the last ends, and each change with its own end."""
        value = self._value
        if not value.layers:
            return None
        return {
            "previous": value.permanent.model_dump(),
            "expires_s": max(layer.expires_s for layer in value.layers),
            "temporary": [
                {"changes": layer.changes, "expires_s": layer.expires_s} for layer in value.layers
            ],
        }

    @property
    def mode_override(self) -> dict[str, Any] | None:
        """The temporary modes pending: the mode that stays when they have gone (`previous`),
        when the last ends, and each with its own end."""
        value = self._value
        if not value.mode_layers:
            return None
        return {
            "previous": value.mode_base,
            "expires_s": max(x.expires_s for x in value.mode_layers),
            "temporary": [
                {"mode": x.changes["mode"], "expires_s": x.expires_s} for x in value.mode_layers
            ],
        }

    # --- changes (API threads) -----------------------------------------------------------
    def change_setpoints(
        self, update: dict[str, Any], by: Actor, ttl_s: float | None, replace_all: bool = False
    ) -> Setpoints:
        """Validate the whole result first (the setpoints, then the dispatch configuration they
        make with the site's): a rejected change changes nothing; a change that changes
        nothing is neither stored nor audited.

        With `ttl_s`, the change is temporary: it lies over what is in force, and at its own
        end it goes, whatever else was changed meanwhile (temporary changes on the same field
        unwind in turn). Without it, the change is permanent for the fields it names (they
        leave the temporary changes); the others' reverts keep their time. Each state the
        setpoints will pass through as the temporary changes end must be valid as a whole, or
        the change is refused, naming the revert that would break it."""
        with self._lock:
            now = time.time()
            value = self._settle(now)
            old = value.setpoints
            new = Setpoints(**(update if replace_all else {**old.model_dump(), **update}))
            dispatch = dispatch_config(self.site, new)  # raises ValidationError, nothing changed
            # The fields the operator named (a PUT names them all), with their new values:
            # naming a field's present value still makes it permanent, or starts a new end.
            named = {k: getattr(new, k) for k in (new.model_dump() if replace_all else update)}
            in_layers = any(k in layer.changes for layer in value.layers for k in named)
            if new == old and not in_layers:
                return old
            permanent, layers = value.permanent, value.layers
            if ttl_s is not None:
                layers = (*layers, Layer(named, now + ttl_s))
            else:
                permanent = Setpoints(**{**permanent.model_dump(), **named})
                kept = (without(layer, named) for layer in layers)
                layers = tuple(layer for layer in kept if layer.changes)
            check_future(self.site, permanent, layers)
            with self.db.transaction():  # all of it stored, or none of it
                self._save_setpoints(new, permanent, layers)
                self.db.audit(by, "setpoints.change", *_diff(old, new))
                if ttl_s is not None:
                    ttl = {"ttl_s": ttl_s, "fields": list(named)}
                    self.db.audit(by, "setpoints.ttl", None, ttl)
            self._value = replace(
                value, setpoints=new, dispatch=dispatch, permanent=permanent, layers=layers
            )
            return new

    def _save_setpoints(
        self, setpoints: Setpoints, permanent: Setpoints, layers: tuple[Layer, ...]
    ) -> None:
        self.db.put_setting("setpoints", setpoints.model_dump())
        self.db.put_setting("setpoints_permanent", permanent.model_dump())
        self.db.put_setting("setpoint_layers", as_saved(layers))
        self.db.put_setting("override", None)  # the single revert of before layers

    def change_mode(self, mode: Mode, by: Actor, ttl_s: float | None) -> Mode:
        """With `ttl_s`, the mode is temporary and goes at its own end (temporary modes stack:
        `safe` for 4 s, then `manual` for 2 s: manual, safe again, then the mode before);
        without it, the mode is permanent and every temporary one is cancelled."""
        with self._lock:
            now = time.time()
            value = self._settle(now)
            if ttl_s is not None:
                layer = Layer({"mode": mode}, now + ttl_s)
                base, layers = value.mode_base, (*value.mode_layers, layer)
            else:
                base, layers = mode, ()
            with self.db.transaction():
                self._save_mode(mode, base, layers)
                self.db.audit(by, "mode.change", value.mode, {"mode": mode, "ttl_s": ttl_s})
            self._value = replace(value, mode=mode, mode_base=base, mode_layers=layers)
            return mode

    def _save_mode(self, mode: Mode, base: Mode, layers: tuple[Layer, ...]) -> None:
        self.db.put_setting("mode", mode)
        self.db.put_setting("mode_base", base)
        self.db.put_setting("mode_layers", as_saved(layers))
        self.db.put_setting("mode_override", None)  # the single revert of before layers

    def add_event(self, event: EventIn, by: Actor, origin: Origin | None = None) -> dict[str, Any]:
        """Stored with its audit entry in one transaction, then added to what the ticks look
        at (the table is not read again). Conflict once `limits.max_pending_events` events
        are planned or running: each tick goes through them all."""
        with self._lock:
            now, value = time.time(), self._value
            planned = sum(1 for e in value.pending if e.planned_or_running(now))
            what, remedy = "events are planned or running", "cancel one, or wait for one to end"
            limit = self.site.limits.max_pending_events
            check_bound(planned, limit, what, "limits.max_pending_events", remedy)
            with self.db.transaction():
                row = self.db.add_event(
                    event.kind, event.value_w, event.start_s, event.end_s, by, origin
                )
                self.db.audit(by, "event.create", None, row)
            pending = (e for e in value.pending if not self._missed(e, now))
            self._value = replace(value, pending=_in_order((*pending, event_of(row))))
            return row

    def _missed(self, event: Event, now_s: float) -> bool:
        """Over before any tick saw it run (shorter than a tick): no tick will end it."""
        started = event.started or ("event.start", event.id) in self._handed
        return not started and event.end_s <= now_s

    def cancel_event(self, event_id: int, by: Actor) -> dict[str, Any] | None:
        """Stored with its audit entry in one transaction, then taken out of what the ticks
        look at; a running event stays there, cancelled, for the next tick to end it."""
        with self._lock:
            row = self.db.event(event_id)
            if row is None or row["cancelled_at"] is not None:
                return None
            with self.db.transaction():
                cancelled = self.db.mark_event(event_id, "cancelled_at")
                self.db.audit(by, "event.cancel", row, cancelled)
            value = self._value
            pending = (
                replace(e, cancelled=True) if e.id == event_id else e
                for e in value.pending
                if e.id != event_id or e.started
            )
            self._value = replace(value, pending=tuple(pending))
            return cancelled

    # --- each tick (no lock, no disk) -----------------------------------------------------
    def in_force(self, now_s: float) -> InForce:
        """What the tick runs with now: expired overrides reverted, events started and ended
        on time, overlapping events resolved to the strictest, the workload notices pending.
        Each edge is handed once to the writer, which records it and folds it into the value."""
        value = self._value
        expired = self._expired(value, now_s)
        for action, item in expired:
            self._hand((action, id(item)), item)
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
            elif e.kind == "import_cap" and not e.cancelled and e.start_s > now_s:
                ahead = approach_w(e, now_s, dispatch.ramp_down_w_per_s)
                if ahead <= 2.0 * e.value_w:  # nearer: a cap far ahead binds nothing yet
                    cap = min(cap, ahead)
        if math.isfinite(cap) and cap < (dispatch.import_cap_w or math.inf):
            dispatch = self._with_cap(dispatch, cap)
        # The notices ride along: the planner (off the tick's path) plans from them, state and
        # metrics show them.
        notices = self.notices.pending(now_s)
        return InForce(mode, dispatch, setpoints, shed, tuple(active), notices)

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
    def _expired(value: OperatorState, now_s: float) -> list[tuple[str, Layer]]:
        """What is due to revert: ("setpoints.revert", layer) for each temporary change whose
        time is up, ("mode.revert", layer) for each temporary mode."""
        return [
            ("setpoints.revert", layer) for layer in value.layers if now_s >= layer.expires_s
        ] + [("mode.revert", layer) for layer in value.mode_layers if now_s >= layer.expires_s]

    def _reverted(self, value: OperatorState, expired: list[tuple[str, Layer]]) -> OperatorState:
        """`value` with these reverted (every state the reverts pass through was checked when
        the changes were made, or at load, so this does not fail)."""
        ended: dict[str, float] = {}  # per kind, the latest end among those due
        for action, layer in expired:
            ended[action] = max(ended.get(action, -math.inf), layer.expires_s)
        if "setpoints.revert" in ended:
            layers = pending_after(value.layers, ended["setpoints.revert"])
            restored = effective(value.permanent, layers)
            value = replace(
                value,
                setpoints=restored,
                dispatch=dispatch_config(self.site, restored),
                layers=layers,
            )
        if "mode.revert" in ended:
            layers = pending_after(value.mode_layers, ended["mode.revert"])
            value = replace(value, mode=mode_of(value.mode_base, layers), mode_layers=layers)
        return value

    def _settle(self, now_s: float) -> OperatorState:
        """With the lock held (an API change): first record and apply the reverts that are
        due, so a change is made on what is in force, never on an expired one."""
        for action, item in self._expired(self._value, now_s):
            self._fold(action, item)
        return self._value

    def _hand(self, edge: tuple[str, int], item: object) -> None:
        if edge in self._handed:
            return
        self._handed[edge] = item
        action = edge[0]
        log.info(action.replace(".", " "), extra={"edge": str(edge[1])})
        self.writer.put(lambda: self._record_edge(edge, item), f"operations {action}")

    # --- the writer's side ----------------------------------------------------------------
    def _record_edge(self, edge: tuple[str, int], item: object) -> None:
        """The writer's job for an edge a tick saw: record it, fold it into the value."""
        try:
            with self._lock:
                self._fold(edge[0], item)
        finally:
            self._handed.pop(edge, None)

    def _fold(self, action: str, item: object) -> None:
        """With the lock held: persist and audit an edge, and swap the value to include it.
        A revert an operator's change has made moot is skipped."""
        value = self._value
        if action in ("setpoints.revert", "mode.revert"):
            assert isinstance(item, Layer)
            pending = value.layers if action == "setpoints.revert" else value.mode_layers
            if not any(layer.expires_s <= item.expires_s for layer in pending):
                return  # an operator changed it since: nothing to revert
            new = self._reverted(value, [(action, item)])
            if not self.records():
                pass  # in force here all the same; the leader records it
            elif action == "setpoints.revert":
                with self.db.transaction():
                    self._save_setpoints(new.setpoints, new.permanent, new.layers)
                    self.db.audit(SYSTEM, action, *_diff(value.setpoints, new.setpoints))
            else:
                with self.db.transaction():
                    self._save_mode(new.mode, new.mode_base, new.mode_layers)
                    self.db.audit(SYSTEM, action, value.mode, new.mode)
            self._value = new
            return
        assert isinstance(item, Event)
        if self.records():
            what = {"id": item.id, "kind": item.kind, "value_w": item.value_w}
            with self.db.transaction():
                self.db.mark_event(item.id, "started_at" if action == "event.start" else "ended_at")
                self.db.audit(SYSTEM, action, None, what)
        self._value = replace(value, pending=_with_edge(value.pending, action, item))


def _with_edge(pending: tuple[Event, ...], action: str, item: Event) -> tuple[Event, ...]:
    """The pending events once an event's start or end is recorded: an ended one goes; a
    started one is marked so, and one that left them since a tick saw it start (cancelled,
    or dropped as missed) comes back started and cancelled, so the next tick ends it."""
    others = tuple(e for e in pending if e.id != item.id)
    if action == "event.end":
        return others
    current = next((e for e in pending if e.id == item.id), replace(item, cancelled=True))
    return _in_order((*others, replace(current, started=True)))


def _diff(old: Setpoints, new: Setpoints) -> tuple[dict[str, Any], dict[str, Any]]:
    a, b = old.model_dump(), new.model_dump()
    changed = [k for k in a if a[k] != b[k]]
    return {k: a[k] for k in changed}, {k: b[k] for k in changed}
