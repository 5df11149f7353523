"""Evidence for the utility (/v1): disturbance captures (listed, downloaded as COMTRADE, asked
for by an operator) and the compliance report over the recorder's rows. Reads go to the data
folder's files (read-only, off the event loop); a request for a capture is a command to the
controller, which notes it at the next tick and audits it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from controller.api_operate import Limit, keys_hidden
from controller.auth import requires
from controller.commands import ActorIn, CaptureIn
from controller.link import ControllerLink
from controller.opsdb import Actor, OpsDB
from controller.problems import problem_responses
from controller.recorder.captures import CAPTURE_ID, CAPTURES_DIR, capture_file, list_captures

CaptureId = Annotated[str, PathParam(max_length=64, pattern=f"^{CAPTURE_ID}$")]
MEDIA = {"cfg": "text/plain; charset=us-ascii", "dat": "text/plain; charset=us-ascii"}


def evidence_router(link: ControllerLink, db: OpsDB, data_dir: Path) -> APIRouter:
    viewer, operator = (Depends(requires(db, r)) for r in ("viewer", "operator"))
    router = APIRouter(prefix="/v1", responses=problem_responses(401, 403, 404, 422))
    folder = data_dir / CAPTURES_DIR

    @router.get(
        "/captures",
        summary="Disturbance captures, newest first, paged by id",
        description="Each names its cause (frequency_excursion, alarm, mode_change, "
        "event_start, event_end, operator), its trigger and window (unix s) and its files.",
    )
    async def get_captures(
        who: Actor = viewer,
        limit: Limit = 50,
        before_id: Annotated[str | None, Query(max_length=64, pattern=f"^{CAPTURE_ID}$")] = None,
    ) -> dict[str, Any]:
        rows = await asyncio.to_thread(list_captures, folder, limit, before_id)
        shown = keys_hidden(rows, "requested_by", who)
        return {"captures": shown, "next_before_id": rows[-1]["id"] if len(rows) == limit else None}

    @router.get(
        "/captures/{capture_id}/{part}",
        summary="A capture's COMTRADE file (IEEE C37.111-1999, ASCII): cfg or dat",
        response_class=FileResponse,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def get_capture_file(
        capture_id: CaptureId, part: Literal["cfg", "dat"], _: Any = viewer
    ) -> FileResponse:
        path = await asyncio.to_thread(capture_file, folder, capture_id, part)
        if path is None:
            raise HTTPException(404, f"No file {part!r} of capture {capture_id!r}")
        return FileResponse(path, media_type=MEDIA[part], filename=path.name)

    @router.post(
        "/captures",
        status_code=202,
        summary="Keep a capture around now (operator)",
        description="Taken at the next tick; listed once its window (pre_s before, post_s "
        "after) has passed.",
        responses=problem_responses(429),
    )
    async def post_capture(body: CaptureIn, who: Actor = operator) -> dict[str, Any]:
        return await link.call(  # type: ignore[no-any-return]
            "request_capture", reason=body.reason, actor=ActorIn.of(who)
        )

    return router
