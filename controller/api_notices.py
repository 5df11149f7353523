"""Workload notices (/v1/notices): a job scheduler or a training script says what its GPUs
will do, and when. Posting and cancelling are commands to the controller (checked again there,
against the site's window and bound, stored and audited in one transaction, then pending);
the list is read from the SQLite file.

Who: operators and admins, and `workload` keys, which may post notices and cancel the ones
they posted, and nothing else (not even read them back: the answer to a post is the notice
as stored, with its id). Viewers read the list."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from controller.api_operate import BeforeId, Limit, RowId, keys_hidden, page
from controller.auth import requires
from controller.commands import ActorIn
from controller.link import ControllerLink
from controller.notices import NoticeIn
from controller.opsdb import Actor, OpsDB
from controller.problems import problem_responses

FIELDS = (
    "A notice: `kind` (job_start, job_stop, pause_start, pause_end, level_change), `at_s` "
    "(unix s it takes effect: at most the site's `notices.late_s`, 5 s, ago and "
    "`notices.ahead_s`, 7 days, ahead), optional `duration_s`, `power_w` or `gpus` (not both: "
    "the draw after it; a GPU count stands for `notices.power_w_per_gpu` W each) and `job_id`. "
    "Pending until `ends_s`: its time and duration passed, and `notices.late_s` more."
)


def notices_router(link: ControllerLink, db: OpsDB) -> APIRouter:
    viewer = Depends(requires(db, "viewer"))
    announcer = Depends(requires(db, "operator", also=("workload",)))
    router = APIRouter(prefix="/v1", responses=problem_responses(401, 403, 404, 422))

    @router.get(
        "/notices",
        summary="Workload notices, pending and past, newest first",
        description=FIELDS + " A viewer sees `created_by` as `(a key)`.",
    )
    async def list_notices(
        who: Actor = viewer, limit: Limit = 50, before_id: BeforeId = None
    ) -> dict[str, Any]:
        rows = await asyncio.to_thread(db.page, "notices", limit, before_id)
        return page(keys_hidden(rows, "created_by", who), "notices", limit)

    @router.post(
        "/notices",
        status_code=201,
        summary="Announce what the workload will do (operator, or a workload key)",
        description=FIELDS + " One more than `limits.max_pending_notices` pending: 409.",
        responses=problem_responses(409),
    )
    async def post_notice(body: NoticeIn, who: Actor = announcer) -> dict[str, Any]:
        notice = body.model_dump(exclude_unset=True)
        return await link.call(  # type: ignore[no-any-return]
            "add_notice", notice=notice, actor=ActorIn.of(who)
        )

    @router.delete(
        "/notices/{notice_id}",
        summary="Cancel a pending notice (a workload key: only one it posted)",
        responses=problem_responses(409),
    )
    async def delete_notice(notice_id: RowId, who: Actor = announcer) -> dict[str, Any]:
        return await link.call(  # type: ignore[no-any-return]
            "cancel_notice", id=notice_id, actor=ActorIn.of(who)
        )

    return router
