"""The controller's end of the channel to the API process: a fixed table of what the API may
ask. Reads are views of the latest published record (and the operators' value in force);
changes are commands, each checked again here against the same shapes the API checked, then
run through `Operations` and its notices (stored and audited in one transaction before they
take effect).

Views one at a time on one thread, changes one at a time on another: however many clients the
API process serves, the controller's interpreter does at most two bounded pieces of work for
them at once, and a change waiting on a locked disk holds up no read.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import sqlite3
import threading
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import HTTPException
from prometheus_client import Counter, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.alarms import AlarmBook
from controller.channel import (
    MAX_REPLY_BYTES,
    MAX_REQUEST_BYTES,
    VIEWS,
    ChannelClosed,
    FrameTooLarge,
    encode,
    recv_frame,
)
from controller.commands import ActorIn, CaptureIn, KeyIn, ModeIn, SetpointsPatch, SetpointsPut
from controller.config import DeviceConfig
from controller.grid.ven import Ven
from controller.ha.node import HaNode, NotAcknowledged
from controller.metrics import Metrics
from controller.notices import NotYours
from controller.operations import EventIn, Operations
from controller.opsdb import Conflict, OpsDB
from controller.problems import field_errors
from controller.recorder.captures import CaptureKeeper
from controller.snapshot import LinkCounters
from controller.state import SiteState
from drivers.devicemap import DeviceMap

log = logging.getLogger("gridpilot.bridge")
MAX_QUEUED_COMMANDS = 64  # changes waiting on a slow disk; more are refused, not queued
REPLICATE_TIMEOUT_S = 3.0  # HA: a change waits this long for etcd to hold it


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    actor: ActorIn


class _ChangeSetpoints(_Command):
    values: dict[str, Any]
    replace_all: bool = False


class _ChangeMode(_Command):
    change: dict[str, Any]


class _AddEvent(_Command):
    event: dict[str, Any]


class _AddNotice(_Command):
    notice: dict[str, Any]


class _ById(_Command):
    id: int = Field(ge=1, le=2**62)


class _CreateKey(_Command):
    key: dict[str, Any]


class _RevokeKey(_Command):
    key_id: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9]+$")


class _RequestCapture(_Command):
    reason: str


class _Notified(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    token: str = Field(min_length=1, max_length=512)


class Refused(Exception):
    """A command refused with an HTTP status the API answers as a problem document."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


class Bridge:
    def __init__(
        self,
        ops: Operations,
        db: OpsDB,
        state: SiteState,
        alarms: AlarmBook,
        metrics: Metrics,
        configs: Mapping[str, DeviceConfig],
        maps: Mapping[str, DeviceMap],
        captures: CaptureKeeper | None = None,
        ha: HaNode | None = None,
        ven: Ven | None = None,
    ) -> None:
        self.captures, self.ven = captures, ven
        self.ha = ha  # in an HA pair: changes only on the leader, answered once etcd has them
        self.ops, self.db, self.state, self.alarms, self.metrics = ops, db, state, alarms, metrics
        self.configs, self.maps = configs, maps
        self.requests = Counter(
            "gridpilot_api_controller_requests",
            "Requests the API process made of the controller, by operation and HTTP status",
            ["site", "op", "status"],
            registry=metrics.registry,
        )
        self.api_restarts = Counter(
            "gridpilot_api_restarts",
            "Times the API process died and was started anew",
            ["site"],
            registry=metrics.registry,
        )
        self.api_restarts.labels(state.site)
        self._table: dict[str, Callable[[dict[str, Any]], Any]] = {
            "state": lambda _: state.to_json(),
            "ready": lambda _: list(state.ready()),
            "devices": lambda _: [self._device(i) for i in configs],
            "setpoints": lambda _: self._setpoints(),
            "mode": lambda _: self._mode(),
            "alarms": lambda _: self._alarms(),
            "metrics": lambda _: generate_latest(metrics.registry).decode(),
            "efficiency": lambda _: self._efficiency(),
            "change_setpoints": self._change_setpoints,
            "change_mode": self._change_mode,
            "add_event": self._add_event,
            "cancel_event": self._cancel_event,
            "add_notice": self._add_notice,
            "cancel_notice": self._cancel_notice,
            "ack_alarm": self._ack_alarm,
            "create_key": self._create_key,
            "revoke_key": self._revoke_key,
            "request_capture": self._request_capture,
            "openadr_notify": self._openadr_notify,
        }

    # --- the channel ----------------------------------------------------------------------
    def serve(self, sock: socket.socket) -> None:
        """Answer requests until the API process closes its end (or sends garbage: then the
        channel closes, and the API process is started anew). Views are answered here at
        once; commands, which may wait on the disk, queue for a thread of their own (a
        locked file holds up changes, never a read of the state)."""
        send_lock = threading.Lock()
        commands: queue.Queue[dict[str, Any] | None] = queue.Queue(MAX_QUEUED_COMMANDS)

        def reply(message: dict[str, Any], answer: dict[str, Any]) -> None:
            data = encode(answer)
            if len(data) > MAX_REPLY_BYTES:
                data = encode(_failure(message, 500, "Reply too large", f"{len(data)} bytes"))
            with send_lock, contextlib.suppress(OSError):
                sock.sendall(data)

        def run_commands() -> None:
            while (message := commands.get()) is not None:
                reply(message, self.handle(message))

        worker = threading.Thread(target=run_commands, name="api-commands", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    message = recv_frame(sock, MAX_REQUEST_BYTES)
                except (ChannelClosed, OSError):
                    return
                except (FrameTooLarge, ValueError) as exc:
                    log.error("bad frame from the API process; closing", extra={"error": str(exc)})
                    return
                if message.get("op") in VIEWS:
                    reply(message, self.handle(message))
                    continue
                try:
                    commands.put_nowait(message)
                except queue.Full:
                    busy = f"{MAX_QUEUED_COMMANDS} changes already wait; nothing was changed"
                    reply(message, _failure(message, 503, "Busy", busy))
        finally:
            commands.put(None)

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        reply = self._answer(message)
        op = message.get("op")
        op = op if isinstance(op, str) and op in self._table else "unknown"  # a bounded label
        status = 200 if reply["ok"] else reply["status"]
        self.requests.labels(self.state.site, op, str(status)).inc()
        return reply

    def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        op, args = message.get("op"), message.get("args", {})
        run = self._table.get(op) if isinstance(op, str) else None
        if run is None or not isinstance(args, dict):
            return _failure(message, 400, "Unknown request", f"no operation {op!r}")
        ha = self.ha if op not in VIEWS else None  # a change, in an HA pair
        try:
            if ha is not None:
                ha.check_change()
            value = run(args)
            if ha is not None:
                ha.replicated(REPLICATE_TIMEOUT_S)
            return {"id": message.get("id"), "ok": True, "value": value}
        except NotAcknowledged as exc:
            return _failure(message, 503, exc.title, exc.detail)
        except ValidationError as exc:
            errors = field_errors(list(exc.errors()))
            return _failure(message, 422, "Invalid request", "nothing was changed", errors=errors)
        except Refused as exc:
            return _failure(message, exc.status, exc.title, exc.detail)
        except Conflict as exc:  # a bound reached, the last admin key: nothing was changed
            return _failure(message, 409, "Conflict", f"{exc}; nothing was changed")
        except HTTPException as exc:
            return _failure(message, exc.status_code, str(exc.detail), f"{op}")
        except sqlite3.DatabaseError as exc:  # locked or failing disk: rolled back whole
            log.warning("change not stored", extra={"op": op, "error": str(exc)})
            return _failure(
                message,
                503,
                "Storage unavailable",
                f"{exc}; not stored, nothing was changed, try again",
            )
        except Exception as exc:
            log.exception("request failed", extra={"op": op})
            return _failure(message, 500, "Internal error", f"{op}: {type(exc).__name__}")

    # --- views ----------------------------------------------------------------------------
    def _device(self, device_id: str) -> dict[str, Any]:
        """The device's configuration, and its link state and counters as of the last tick."""
        c, m = self.configs[device_id], self.maps[device_id]
        rec = self.state.last
        dev = rec.snapshot.devices.get(device_id) if rec is not None else None
        counters = dev.counters if dev is not None else LinkCounters()
        return {
            "id": device_id,
            "kind": c.kind,
            "address": f"{c.host}:{c.port}",
            "protocol": m.protocol,
            "map": m.source,
            "roles": dict(m.roles),
            "secured": c.security is not None,
            "connected": dev is not None and dev.connected,
            "frozen": dev is not None and dev.frozen,
            "identity": dict(dev.identity) if dev is not None else {},
            "poll_period_s": c.poll_period_s,
            "timeout_s": c.timeout_s,
            "stale_after_s": c.stale_after_s,
            "counters": {
                "polls": counters.polls,
                "errors": counters.errors,
                "errors_by_kind": dict(counters.errors_by_kind),
                "retries": counters.retries,
                "writes": counters.writes,
                "write_errors": counters.write_errors,
                "last_poll_s": counters.last_poll_s,
            },
            "last_error": dev.last_error if dev is not None else None,
            "last_write_error": counters.last_write_error,
        }

    def _setpoints(self) -> dict[str, Any]:
        return {**self.ops.setpoints.model_dump(), "override": self.ops.override}

    def _mode(self) -> dict[str, Any]:
        return {"mode": self.ops.mode, "override": self.ops.mode_override}

    def _alarms(self) -> dict[str, Any]:
        """From memory (raised, cleared, acknowledged there, whatever the disk does)."""
        return {
            "active": [a.to_json() for a in self.alarms.active],
            "recent": [a.to_json() for a in self.alarms.recent],
        }

    def _efficiency(self) -> dict[str, Any]:
        """PUE, tokens per joule and ERF over each window (absent until half covered), and
        the energy account since start, as of the last tick."""
        ratios: dict[str, dict[str, float]] = {}
        for (ratio, window), value in self.metrics.ratios.latest.items():
            ratios.setdefault(ratio, {})[window] = value
        e = self.metrics.energy_view
        return {
            **ratios,
            "energy_j": {
                "it": e.it_j,
                "cooling": e.cooling_j,
                "facility": e.facility_j,
                "grid_import": e.grid_import_j,
                "recovered_heat": e.reused_heat_j,
            },
            "tokens": self.metrics.tokens.total(),
        }

    # --- commands -------------------------------------------------------------------------
    def _change_setpoints(self, args: dict[str, Any]) -> dict[str, Any]:
        cmd = _ChangeSetpoints.model_validate(args)
        shape = SetpointsPut if cmd.replace_all else SetpointsPatch
        body = shape.model_validate(cmd.values)
        values = body.model_dump(exclude={"ttl_s"}, exclude_unset=not cmd.replace_all)
        self.ops.change_setpoints(values, cmd.actor.actor(), body.ttl_s, cmd.replace_all)
        return self._setpoints()

    def _change_mode(self, args: dict[str, Any]) -> dict[str, Any]:
        cmd = _ChangeMode.model_validate(args)
        body = ModeIn.model_validate(cmd.change)
        self.ops.change_mode(body.mode, cmd.actor.actor(), body.ttl_s)
        return self._mode()

    def _add_event(self, args: dict[str, Any]) -> dict[str, Any]:
        cmd = _AddEvent.model_validate(args)
        return self.ops.add_event(EventIn.model_validate(cmd.event), cmd.actor.actor())

    def _cancel_event(self, args: dict[str, Any]) -> dict[str, Any]:
        cmd = _ById.model_validate(args)
        row = self.ops.cancel_event(cmd.id, cmd.actor.actor())
        if row is None:
            raise Refused(404, "Not found", f"No event {cmd.id} to cancel")
        return row

    def _add_notice(self, args: dict[str, Any]) -> dict[str, Any]:
        cmd = _AddNotice.model_validate(args)
        return self.ops.notices.add(cmd.notice, cmd.actor.actor())  # checked there, whole

    def _cancel_notice(self, args: dict[str, Any]) -> dict[str, Any]:
        cmd = _ById.model_validate(args)
        try:
            row = self.ops.notices.cancel(cmd.id, cmd.actor.actor())
        except NotYours as exc:
            raise Refused(403, "Forbidden", f"{exc}; nothing was changed") from None
        if row is None:
            raise Refused(404, "Not found", f"No notice {cmd.id} to cancel (or cancelled before)")
        return row

    def _openadr_notify(self, args: dict[str, Any]) -> dict[str, Any]:
        """The VTN's call back: with the VEN's token, it reads the VTN at once."""
        token = _Notified.model_validate(args).token
        if self.ven is None:
            raise Refused(404, "Not found", "this controller runs no OpenADR VEN")
        if not self.ven.notified(token):
            raise Refused(401, "Unauthorized", "not the token this VEN subscribed with")
        return {"read": "now"}

    def _ack_alarm(self, args: dict[str, Any]) -> dict[str, Any]:
        cmd = _ById.model_validate(args)
        who = cmd.actor.actor()
        live = self.alarms.acknowledge(cmd.id, who)  # audited by the writer, with the ack
        if live is not None:
            return live.to_json()
        row = self.db.ack_alarm(cmd.id, who)  # one from before this start (with its audit)
        if row is None:
            raise Refused(404, "Not found", f"No alarm {cmd.id}")
        return row

    def _request_capture(self, args: dict[str, Any]) -> dict[str, Any]:
        cmd = _RequestCapture.model_validate(args)
        body = CaptureIn.model_validate({"reason": cmd.reason})
        if self.captures is None:
            raise Refused(503, "Recorder off", "the site file turns the recorder off")
        if self.captures.waiting_full:
            raise Refused(429, "Too many requests", "capture requests wait for the next tick")
        who = cmd.actor.actor()
        self.db.audit(who, "capture.request", None, {"reason": body.reason})
        return self.captures.request(body.reason, who.label)

    def _create_key(self, args: dict[str, Any]) -> dict[str, Any]:
        cmd = _CreateKey.model_validate(args)
        body = KeyIn.model_validate(cmd.key)
        key_id, token = self.db.create_key(body.name, body.role, cmd.actor.actor())
        return {"id": key_id, "name": body.name, "role": body.role, "key": token}

    def _revoke_key(self, args: dict[str, Any]) -> dict[str, Any]:
        cmd = _RevokeKey.model_validate(args)
        if not self.db.revoke_key(cmd.key_id, cmd.actor.actor()):
            raise Refused(404, "Not found", f"No active key {cmd.key_id!r}")
        return {"id": cmd.key_id, "revoked": True}


def _failure(
    message: dict[str, Any], status: int, title: str, detail: str, **extra: Any
) -> dict[str, Any]:
    return {
        "id": message.get("id"),
        "ok": False,
        "status": status,
        "title": title,
        "detail": detail,
        **extra,
    }
