"""The operator API (/v1): devices, setpoints, mode, demand-response events, alarms, audit,
keys. Every change is authorised, validated before anything changes, persisted and audited."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from copy import copy
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from controller.alarms import AlarmBook
from controller.auth import requires
from controller.config import DeviceConfig
from controller.operations import EventIn, Operations
from controller.opsdb import NO_CURSOR, Actor, OpsDB, Role
from controller.problems import problem_responses
from controller.setpoints import Mode, Setpoints
from controller.snapshot import LinkCounters
from controller.state import SiteState
from drivers.devicemap import DeviceMap

RowId = Annotated[int, Path(ge=1, le=2**62, description="as listed")]
KeyId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z0-9]+$")]
DeviceId = Annotated[str, Path(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9-]*$")]
# Lists come in pages, newest first: the next page is the one before the last id shown.
Limit = Annotated[int, Query(ge=1, le=100, description="at most this many")]
BeforeId = Annotated[int | None, Query(ge=1, le=2**62, description="a page's next_before_id")]


def page(rows: list[dict[str, Any]], name: str, limit: int) -> dict[str, Any]:
    """A page of `rows` as `name`, and where the next begins (none: this was the last)."""
    return {name: rows, "next_before_id": rows[-1]["id"] if len(rows) == limit else None}


TTL = Field(None, gt=0, le=86400, description="revert to the values before, after this long")


def _patch_of(model: type[BaseModel], name: str) -> type[BaseModel]:
    """`model` with every field optional (absent: unchanged) and the same bounds, plus
    `ttl_s`: one list of setpoints and bounds serves PUT and PATCH alike."""
    fields: dict[str, Any] = {
        field: (info.annotation | None, _optional(info))  # type: ignore[operator]
        for field, info in model.model_fields.items()
    }
    fields["ttl_s"] = (float | None, TTL)
    return create_model(name, __config__=model.model_config, **fields)


def _optional(info: FieldInfo) -> FieldInfo:
    optional = copy(info)
    optional.default = None
    return optional


SetpointsPatch = _patch_of(Setpoints, "SetpointsPatch")


class SetpointsPut(Setpoints):
    ttl_s: float | None = TTL


class ModeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    mode: Mode
    ttl_s: float | None = Field(None, gt=0, le=86400, description="back to the mode before")


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9 ._-]+$")
    role: Role


def operate_router(
    ops: Operations,
    db: OpsDB,
    state: SiteState,
    alarms: AlarmBook,
    configs: Mapping[str, DeviceConfig],
    maps: Mapping[str, DeviceMap],
) -> APIRouter:
    viewer, operator, admin = (Depends(requires(db, r)) for r in ("viewer", "operator", "admin"))
    router = APIRouter(prefix="/v1", responses=problem_responses(401, 403, 404, 422))

    def device_json(device_id: str) -> dict[str, Any]:
        """The device's configuration, and its link state and counters as of the last tick."""
        c, m = configs[device_id], maps[device_id]
        rec = state.last
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

    @router.get("/devices", summary="Every device: configuration, link state, counters")
    async def list_devices(_: Actor = viewer) -> list[dict[str, Any]]:
        return [device_json(i) for i in configs]

    @router.get("/devices/{device_id}", summary="One device")
    async def get_device(device_id: DeviceId, _: Actor = viewer) -> dict[str, Any]:
        if device_id not in configs:
            raise HTTPException(404, f"No device {device_id!r}")
        return device_json(device_id)

    def setpoints_json() -> dict[str, Any]:
        return {**ops.setpoints.model_dump(), "override": ops.override}

    @router.get("/setpoints", summary="Setpoints in force, and a pending revert if any")
    async def get_setpoints(_: Actor = viewer) -> dict[str, Any]:
        return setpoints_json()

    @router.put("/setpoints", summary="Replace every setpoint")
    async def put_setpoints(body: SetpointsPut, who: Actor = operator) -> dict[str, Any]:
        values = body.model_dump(exclude={"ttl_s"})
        await asyncio.to_thread(ops.change_setpoints, values, who, body.ttl_s, True)
        return setpoints_json()

    @router.patch("/setpoints", summary="Change some setpoints")
    async def patch_setpoints(body: SetpointsPatch, who: Actor = operator) -> dict[str, Any]:
        values = body.model_dump(exclude={"ttl_s"}, exclude_unset=True)
        await asyncio.to_thread(ops.change_setpoints, values, who, body.ttl_s)
        return setpoints_json()

    @router.get("/mode", summary="The control mode")
    async def get_mode(_: Actor = viewer) -> dict[str, Any]:
        return {"mode": ops.mode, "override": ops.mode_override}

    @router.post("/mode", summary="auto, manual (batteries hold manual_battery_w) or safe")
    async def post_mode(body: ModeIn, who: Actor = operator) -> dict[str, Any]:
        await asyncio.to_thread(ops.change_mode, body.mode, who, body.ttl_s)
        return {"mode": ops.mode, "override": ops.mode_override}

    @router.get("/events", summary="Demand-response events, past and planned, newest first")
    async def list_events(
        _: Actor = viewer, limit: Limit = 50, before_id: BeforeId = None
    ) -> dict[str, Any]:
        return page(await asyncio.to_thread(db.events_page, limit, before_id), "events", limit)

    @router.post(
        "/events",
        status_code=201,
        summary="Schedule an import cap or a shed target",
        responses=problem_responses(409),
    )
    async def post_event(body: EventIn, who: Actor = operator) -> dict[str, Any]:
        return await asyncio.to_thread(ops.add_event, body, who)

    @router.delete("/events/{event_id}", summary="Cancel an event (it ends now if running)")
    async def delete_event(event_id: RowId, who: Actor = operator) -> dict[str, Any]:
        row = await asyncio.to_thread(ops.cancel_event, event_id, who)
        if row is None:
            raise HTTPException(404, f"No event {event_id} to cancel")
        return row

    @router.get("/alarms", summary="Active alarms, or the history, newest first")
    async def list_alarms(
        _: Actor = viewer,
        active: Annotated[bool, Query()] = False,
        limit: Limit = 50,
        before_id: BeforeId = None,
    ) -> dict[str, Any]:
        # From memory first (raised, cleared, acknowledged there, whatever the disk does).
        below = before_id or NO_CURSOR
        shown = alarms.active if active else alarms.recent
        found = {a.id: a.to_json() for a in shown if a.id < below}
        if not active:  # each source's newest `limit` hold the newest `limit` of both
            stored = await asyncio.to_thread(db.alarms, False, limit, before_id)
            found = {a["id"]: a for a in stored} | found
        rows = sorted(found.values(), key=lambda a: -a["id"])[:limit]
        return page(rows, "alarms", limit)

    @router.post("/alarms/{alarm_id}/ack", summary="Acknowledge an alarm")
    async def ack_alarm(alarm_id: RowId, who: Actor = operator) -> dict[str, Any]:
        live = alarms.acknowledge(alarm_id, who)  # audited by the writer, with the ack
        if live is not None:
            return live.to_json()
        row = await asyncio.to_thread(db.ack_alarm, alarm_id, who)  # one from before this start
        if row is None:
            raise HTTPException(404, f"No alarm {alarm_id}")
        return row

    @router.get("/audit", summary="The audit log, newest first, paged by id")
    async def get_audit(
        _: Actor = viewer,
        limit: Limit = 50,
        before_id: BeforeId = None,
    ) -> dict[str, Any]:
        return page(await asyncio.to_thread(db.audit_page, limit, before_id), "entries", limit)

    @router.get("/keys", summary="API keys, newest first (never the keys themselves)")
    async def list_keys(
        _: Actor = admin,
        limit: Limit = 50,
        before_id: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z0-9]+$")] = None,
    ) -> dict[str, Any]:
        return page(await asyncio.to_thread(db.keys_page, limit, before_id), "keys", limit)

    @router.post(
        "/keys",
        status_code=201,
        summary="Create a key; it is shown only here",
        responses=problem_responses(409),
    )
    async def create_key(body: KeyIn, who: Actor = admin) -> dict[str, Any]:
        key_id, token = await asyncio.to_thread(db.create_key, body.name, body.role, who)
        return {"id": key_id, "name": body.name, "role": body.role, "key": token}

    @router.delete(
        "/keys/{key_id}", summary="Revoke a key (never the last admin key)",
        responses=problem_responses(409),
    )  # fmt: skip
    async def revoke_key(key_id: KeyId, who: Actor = admin) -> dict[str, Any]:
        if not await asyncio.to_thread(db.revoke_key, key_id, who):
            raise HTTPException(404, f"No active key {key_id!r}")
        return {"id": key_id, "revoked": True}

    return router
