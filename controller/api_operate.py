"""The operator API (/v1): devices, setpoints, mode, demand-response events, alarms, audit,
keys. Every change is authorised and validated here, then sent to the controller as a command,
which checks it again, stores and audits it in one transaction, and only then applies it.
Histories (events, alarms, the audit log, keys) are read from the SQLite file."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from controller.auth import requires
from controller.commands import ActorIn, KeyIn, ModeIn, SetpointsPatch, SetpointsPut
from controller.link import ControllerLink
from controller.mv import MvSettings
from controller.mv_keeper import kept, measure, rows_of, span_of
from controller.operations import EventIn
from controller.opsdb import NO_CURSOR, Actor, OpsDB
from controller.problems import problem_responses

RowId = Annotated[int, Path(ge=1, le=2**62, description="as listed")]
KeyId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z0-9]+$")]
DeviceId = Annotated[str, Path(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9-]*$")]
# Lists come in pages, newest first: the next page is the one before the last id shown.
Limit = Annotated[int, Query(ge=1, le=100, description="at most this many")]
BeforeId = Annotated[int | None, Query(ge=1, le=2**62, description="a page's next_before_id")]


def page(rows: list[dict[str, Any]], name: str, limit: int) -> dict[str, Any]:
    """A page of `rows` as `name`, and where the next begins (none: this was the last)."""
    return {name: rows, "next_before_id": rows[-1]["id"] if len(rows) == limit else None}


def measured(
    db: OpsDB, event_id: int, mv: MvSettings, series_step_s: float | None
) -> dict[str, Any] | None:
    """An event's M&V: kept once over (unless a series is asked for), else measured now."""
    if series_step_s is None and (figures := kept(db.query, event_id)) is not None:
        return {"kept": True, **figures}
    row = db.event(event_id)
    if row is None or row["started_at"] is None:
        return None
    now = time.time()
    spans = [span_of(r) for r in rows_of(db.query, span_of(row)[0] - 86400.0)]
    perf = measure(db.query, row, spans, now, mv)
    return {"kept": False, **perf.to_json(series_step_s)}


def operate_router(link: ControllerLink, db: OpsDB, mv: MvSettings) -> APIRouter:
    viewer, operator, admin = (Depends(requires(db, r)) for r in ("viewer", "operator", "admin"))
    router = APIRouter(prefix="/v1", responses=problem_responses(401, 403, 404, 422))

    @router.get("/devices", summary="Every device: configuration, link state, counters")
    async def list_devices(_: Actor = viewer) -> list[dict[str, Any]]:
        return await link.view("devices")  # type: ignore[no-any-return]

    @router.get("/devices/{device_id}", summary="One device")
    async def get_device(device_id: DeviceId, _: Actor = viewer) -> dict[str, Any]:
        for device in await link.view("devices"):
            if device["id"] == device_id:
                return device  # type: ignore[no-any-return]
        raise HTTPException(404, f"No device {device_id!r}")

    @router.get("/setpoints", summary="Setpoints in force, and a pending revert if any")
    async def get_setpoints(_: Actor = viewer) -> dict[str, Any]:
        return await link.view("setpoints")  # type: ignore[no-any-return]

    @router.put("/setpoints", summary="Replace every setpoint")
    async def put_setpoints(body: SetpointsPut, who: Actor = operator) -> dict[str, Any]:
        values = body.model_dump(exclude_unset=True)
        return await link.call(  # type: ignore[no-any-return]
            "change_setpoints", values=values, replace_all=True, actor=ActorIn.of(who)
        )

    @router.patch("/setpoints", summary="Change some setpoints")
    async def patch_setpoints(body: SetpointsPatch, who: Actor = operator) -> dict[str, Any]:
        values = body.model_dump(exclude_unset=True)
        return await link.call(  # type: ignore[no-any-return]
            "change_setpoints", values=values, actor=ActorIn.of(who)
        )

    @router.get("/mode", summary="The control mode")
    async def get_mode(_: Actor = viewer) -> dict[str, Any]:
        return await link.view("mode")  # type: ignore[no-any-return]

    @router.post("/mode", summary="auto, manual (batteries hold manual_battery_w) or safe")
    async def post_mode(body: ModeIn, who: Actor = operator) -> dict[str, Any]:
        change = body.model_dump(exclude_unset=True)
        return await link.call(  # type: ignore[no-any-return]
            "change_mode", change=change, actor=ActorIn.of(who)
        )

    @router.get(
        "/events",
        summary="Demand-response events, past and planned, newest first",
        description="A viewer sees `created_by` as `(a key)`.",
    )
    async def list_events(
        who: Actor = viewer, limit: Limit = 50, before_id: BeforeId = None
    ) -> dict[str, Any]:
        rows = await asyncio.to_thread(db.events_page, limit, before_id)
        return page(keys_hidden(rows, "created_by", who), "events", limit)

    @router.post(
        "/events",
        status_code=201,
        summary="Schedule an import cap or a shed target",
        responses=problem_responses(409),
    )
    async def post_event(body: EventIn, who: Actor = operator) -> dict[str, Any]:
        event = body.model_dump()
        return await link.call(  # type: ignore[no-any-return]
            "add_event", event=event, actor=ActorIn.of(who)
        )

    @router.get(
        "/events/{event_id}/performance",
        summary="What the site delivered in an event (M&V): baselines, response, held, energy",
        description="An event over: its figures as kept when it ended. A running one: measured "
        "now from the 1 s samples (`series_step_s` adds the grid, baseline and delivered "
        "reduction over time, W, averaged per step). Powers in W, energy in J, times in s.",
    )
    async def event_performance(
        event_id: RowId,
        _: Actor = viewer,
        series_step_s: Annotated[float | None, Query(ge=1, le=3600)] = None,
    ) -> dict[str, Any]:
        figures = await asyncio.to_thread(measured, db, event_id, mv, series_step_s)
        if figures is None:
            raise HTTPException(404, f"No event {event_id} that has started")
        return figures

    @router.delete("/events/{event_id}", summary="Cancel an event (it ends now if running)")
    async def delete_event(event_id: RowId, who: Actor = operator) -> dict[str, Any]:
        return await link.call(  # type: ignore[no-any-return]
            "cancel_event", id=event_id, actor=ActorIn.of(who)
        )

    @router.get("/alarms", summary="Active alarms, or the history, newest first")
    async def list_alarms(
        who: Actor = viewer,
        active: Annotated[bool, Query()] = False,
        limit: Limit = 50,
        before_id: BeforeId = None,
    ) -> dict[str, Any]:
        # From the controller's memory first (raised, cleared, acknowledged there, whatever
        # the disk does), then the file's history.
        live = await link.view("alarms")
        below = before_id or NO_CURSOR
        found = {a["id"]: a for a in live["active" if active else "recent"] if a["id"] < below}
        if not active:  # each source's newest `limit` hold the newest `limit` of both
            stored = await asyncio.to_thread(db.alarms, False, limit, before_id)
            found = {a["id"]: a for a in stored} | found
        rows = sorted(found.values(), key=lambda a: -a["id"])[:limit]
        return page(keys_hidden(rows, "acked_by", who), "alarms", limit)

    @router.post("/alarms/{alarm_id}/ack", summary="Acknowledge an alarm")
    async def ack_alarm(alarm_id: RowId, who: Actor = operator) -> dict[str, Any]:
        return await link.call(  # type: ignore[no-any-return]
            "ack_alarm", id=alarm_id, actor=ActorIn.of(who)
        )

    @router.get(
        "/audit",
        summary="The audit log, newest first, paged by id",
        description="A viewer sees what changed and when, not who: keys' ids and names, and "
        "what key changes said, are shown to operators and admins only.",
    )
    async def get_audit(
        who: Actor = viewer,
        limit: Limit = 50,
        before_id: BeforeId = None,
    ) -> dict[str, Any]:
        rows = await asyncio.to_thread(db.audit_page, limit, before_id)
        shown = [_for_viewers(row) for row in rows] if who.role == "viewer" else rows
        return page(shown, "entries", limit)

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
        key = body.model_dump()
        return await link.call(  # type: ignore[no-any-return]
            "create_key", key=key, actor=ActorIn.of(who)
        )

    @router.delete(
        "/keys/{key_id}", summary="Revoke a key (never the last admin key)",
        responses=problem_responses(409),
    )  # fmt: skip
    async def revoke_key(key_id: KeyId, who: Actor = admin) -> dict[str, Any]:
        return await link.call(  # type: ignore[no-any-return]
            "revoke_key", key_id=key_id, actor=ActorIn.of(who)
        )

    return router


HIDDEN_KEY = "(a key)"


def keys_hidden(rows: list[dict[str, Any]], field: str, who: Actor) -> list[dict[str, Any]]:
    """Rows as `who` may see them: a viewer sees that a key did it, not which."""
    if who.role != "viewer":
        return rows
    return [{**row, field: HIDDEN_KEY} if row.get(field) else row for row in rows]


def _for_viewers(entry: dict[str, Any]) -> dict[str, Any]:
    """An audit entry without the keys in it: who (unless the system), a key change's content
    (names and roles), and who made an event."""
    shown = dict(entry)
    if shown.get("key_id") is not None:
        shown["key_id"], shown["key_name"] = None, HIDDEN_KEY
    if str(shown.get("action", "")).startswith("key."):
        shown["old"] = shown["new"] = None
    for side in ("old", "new"):  # an event's own record names the key that made it
        if isinstance(shown.get(side), dict) and "created_by" in shown[side]:
            shown[side] = {**shown[side], "created_by": HIDDEN_KEY}
    return shown
