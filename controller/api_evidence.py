"""Evidence for the utility (/v1): disturbance captures (listed, downloaded as COMTRADE, asked
for by an operator), the compliance report over the recorder's rows, and the last minutes of
those rows (the console's chart). Reads go to the data
folder's files (read-only, off the event loop); a request for a capture is a command to the
controller, which notes it at the next tick and audits it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from controller.api_operate import Limit, keys_hidden, page
from controller.auth import requires
from controller.commands import ActorIn, CaptureIn
from controller.link import ControllerLink
from controller.opsdb import Actor, OpsDB
from controller.problems import problem_responses
from controller.recorder.captures import CAPTURE_ID, CAPTURES_DIR, capture_file, list_captures
from controller.recorder.reader import RECORDER_DIR, RecorderDataError, recent_columns
from controller.report.profile import BUILTIN, builtin_profile
from controller.report.source import ReportInputError, check_range, parse_time, report_of

DEFAULT_REPORT_S = 3600.0
MAX_REPORT_SPAN_S = 7 * 86400.0  # a week at 10 Hz: about half a minute of a CPU
HISTORY_COLUMNS = ("it_w", "grid_w", "grid_target_w", "battery_w", "import_cap_w")
HISTORY_POINTS = 6000  # ten minutes at 10 Hz
CaptureId = Annotated[str, PathParam(max_length=64, pattern=f"^{CAPTURE_ID}$")]
MEDIA = {"cfg": "text/plain; charset=us-ascii", "dat": "text/plain; charset=us-ascii"}


def evidence_router(link: ControllerLink, db: OpsDB, data_dir: Path) -> APIRouter:
    viewer, operator = (Depends(requires(db, r)) for r in ("viewer", "operator"))
    router = APIRouter(prefix="/v1", responses=problem_responses(401, 403, 404, 422))
    folder = data_dir / CAPTURES_DIR
    recorder = data_dir / RECORDER_DIR

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
        return page(keys_hidden(rows, "requested_by", who), "captures", limit)

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

    @router.get(
        "/history",
        summary="The last minutes of the site's power, from the recorder (the console's chart)",
        description="IT load, grid draw and its plan, battery power and the import cap in "
        "force (W), with each row's time (unix s); null where unknown. At most 6,000 rows: a "
        "longer span comes at a coarser step.",
    )
    async def get_history(
        _: Actor = viewer,
        seconds: Annotated[float, Query(gt=0, le=3600, description="how far back, s")] = 600.0,
    ) -> dict[str, list[float | None]]:
        now = time.time()
        return await asyncio.to_thread(
            recent_columns, recorder, now - seconds, now, HISTORY_COLUMNS, HISTORY_POINTS
        )

    reporting = asyncio.Lock()  # one report at a time: each may read a day of rows

    @router.get(
        "/report",
        summary="The grid-compliance report over a time range of the recorder (JSON)",
        description="Ramps per window, band energy, frequency events, import caps, captures "
        "and battery use, each check against a shipped profile. `from` and `to`: unix s or "
        "ISO 8601 (UTC without an offset); the default is the last hour, the most 7 days. One "
        "report is computed at a time; another asked meanwhile is answered 429.",
        responses=problem_responses(429),
    )
    async def get_report(
        _: Actor = viewer,
        from_t: Annotated[str | None, Query(alias="from", max_length=40)] = None,
        to_t: Annotated[str | None, Query(alias="to", max_length=40)] = None,
        profile: Annotated[Literal[BUILTIN], Query()] = "generic",  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        try:
            to_s = parse_time(to_t) if to_t is not None else time.time()
            from_s = parse_time(from_t) if from_t is not None else to_s - DEFAULT_REPORT_S
            check_range(from_s, to_s)
            if to_s - from_s > MAX_REPORT_SPAN_S:
                raise ReportInputError(
                    f"at most {MAX_REPORT_SPAN_S / 86400:g} days at once; "
                    "`gridpilot report` on the host takes any range"
                )
        except ReportInputError as exc:
            raise HTTPException(422, str(exc)) from None
        if reporting.locked():
            raise HTTPException(429, "A report is being computed", headers={"Retry-After": "5"})
        async with reporting:
            try:
                return await asyncio.to_thread(
                    report_of, data_dir, from_s, to_s, builtin_profile(profile)
                )
            except RecorderDataError:  # its message names a folder: not for clients
                raise HTTPException(404, "No recorder data on this controller") from None

    return router
