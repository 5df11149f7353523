"""The VEN: reads the VTN every `poll_s`, turns its events into gridpilot's import caps and
sheds (stored and audited like an operator's, with their source), and reports back.

The imperative shell around `mapping` and `reconcile`: the library's blocking calls run on one
thread of their own (a hung VTN holds that thread, never the control loop, and no second call
queues behind it); the store's changes on another. A failure is logged when its kind changes,
counted by kind, and raises an alarm once it has lasted `alarm_after_s` (the tick reads the
status). Events already received stay in force through an outage: nothing is reconciled
without a complete read.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from controller.grid.config import OpenADRConfig
from controller.grid.link import Reading, VtnError, VtnLink
from controller.grid.mapping import Refused, map_event
from controller.grid.reconcile import Changes, Held, reconcile
from controller.grid.reports import ReportFigures, report_period_s
from controller.grid.status import VenStatus
from controller.operations import MAX_EVENT_S, EventIn, Operations
from controller.opsdb import Actor, Conflict, Origin
from controller.record import TickRecord

log = logging.getLogger("gridpilot.openadr")
SOURCE = "openadr"
REMEMBERED = 1000  # refusals already logged, newest kept: each is logged once
STORED_SLACK_S = 1.0  # a new version's start (when stored) may follow the newest register read


@dataclass(frozen=True)
class _Mark:
    """Where a VTN event's next report starts."""

    program_id: str
    time_s: float  # unix s
    energy_j: float  # the meter's register then
    baseline_w: float | None  # the newest known (kept for the last report, after the end)


def held_of(row: dict[str, Any]) -> Held:
    return Held(
        row["id"],
        row["ref"] or "",
        row["revision"] or "",
        row["kind"],
        row["value_w"],
        row["start_s"],
        row["end_s"],
        cancelled=row["cancelled_at"] is not None,
    )


class Ven:
    def __init__(
        self,
        cfg: OpenADRConfig,
        ops: Operations,
        latest: Callable[[], TickRecord | None],
        baseline_w: Callable[[int], float | None] = lambda _: None,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.cfg, self.ops, self.leading = cfg, ops, leading
        self.latest, self.baseline_w = latest, baseline_w
        self._marks: dict[str, _Mark] = {}  # per VTN event reported on
        self._report_error: str | None = None
        self._programs: dict[str, str] = {}  # VTN event id → its program's id
        self._periods: dict[str, float] = {}  # VTN event id → its report period, s
        # The VTN calls back with this run's token (a subscription's bearer token): a read then.
        self._token = secrets.token_urlsafe(32) if cfg.callback_url is not None else None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.link = VtnLink(cfg, self._token)
        self.actor = Actor(None, f"openadr:{cfg.ven_name}", "operator")
        self.status = VenStatus(cfg.vtn_url, cfg.ven_name, cfg.alarm_after_s)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openadr")
        self._busy: Future[Any] | None = None
        self._logged: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    # --- the task ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        log.info("VEN started", extra={"vtn": self.cfg.vtn_url, "ven": self.cfg.ven_name})
        self._loop, wake = asyncio.get_running_loop(), asyncio.Event()
        self._wake = wake
        try:
            while not stop.is_set():
                wake.clear()  # a call back during the read below: read again at once
                try:
                    await self.cycle()
                except Exception:  # e.g. the store locked: this read is lost, the next one counts
                    log.exception("VEN cycle failed; tried again next poll")
                    self.status = self.status.counted_error("internal")
                waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
                _, pending = await asyncio.wait(
                    waits, timeout=self.cfg.poll_s, return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    task.cancel()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def notified(self, token: str) -> bool:
        """The VTN's call back (any thread): with this run's token, a read at once."""
        expected = self._token
        if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
            return False
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        return True

    async def cycle(self) -> None:
        """One read of the VTN and, when complete, the events made to match it."""
        now = time.time()
        try:
            reading = await self._io(self.link.read)
        except VtnError as exc:
            self._failed(exc, now)
            return
        await asyncio.to_thread(self._apply, reading, now)
        if self.leading():
            await self._report()

    async def _io[T](self, job: Callable[[], T]) -> T:
        if self._busy is not None and not self._busy.done():
            raise VtnError("timeout", "the previous request to the VTN has not returned")
        self._busy = self._pool.submit(job)
        deadline = self.cfg.timeout_s * 4  # a read is several bounded requests
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self._busy), deadline)
        except TimeoutError:
            raise VtnError("timeout", f"no complete answer in {deadline:.0f} s") from None

    # --- failures ---------------------------------------------------------------------------
    def _failed(self, exc: VtnError, now_s: float) -> None:
        if self.status.last_error != exc.kind:
            log.warning(
                "VTN exchange failed: events already received stay in force",
                extra={"vtn": self.cfg.vtn_url, "kind": exc.kind, "detail": exc.detail},
            )
        self.status = self.status.failed(exc.kind, now_s)

    def _refused(self, refusals: Iterable[Refused]) -> list[str]:
        """Log each refusal once (by event interval, version and reason); their reasons, to
        count, for the new ones."""
        new = []
        for r in refusals:
            key = (r.ref, r.revision, r.reason)
            if key in self._logged:
                continue
            self._logged[key] = None
            if len(self._logged) > REMEMBERED:
                self._logged.popitem(last=False)
            log.warning(
                "VTN payload refused: control unchanged",
                extra={"ref": r.ref, "revision": r.revision, "reason": r.reason}
                | {"detail": r.detail},
            )
            new.append(r.reason)
        return new

    # --- a complete read: the events made to match ------------------------------------------
    def _apply(self, reading: Reading, now_s: float) -> None:
        mapped = [map_event(e, self.cfg, now_s) for e in reading.events]
        wanted = [w for m in mapped for w in m.wanted]
        refusals = [r for m in mapped for r in m.refused]
        refusals += [Refused(f"{i}/*", "", "malformed", d) for i, d in reading.malformed]
        # Every VTN event kept here (its retention bounds them): one stored and since over is
        # not refused as past, it ran.
        held = [held_of(row) for row in self.ops.db.events_from(SOURCE, now_s - MAX_EVENT_S)]
        stored = {h.ref.split("/")[0] for h in held}
        refusals = [
            r for r in refusals if not (r.reason == "past" and r.ref.removesuffix("/*") in stored)
        ]
        changes = reconcile(held, wanted, now_s)
        if changes and self.leading():
            refusals += self._change(changes)
        if self.status.last_error is not None:
            log.info("VTN answers again", extra={"vtn": self.cfg.vtn_url})
        in_force = self.ops.db.events_from(SOURCE, time.time())
        self._programs |= {e.id: e.program_id for e in reading.events}
        self._periods |= {e.id: report_period_s(e, self.cfg.report_s) for e in reading.events}
        self.status = replace(
            self.status.counted_refusals(self._refused(refusals)),
            ven_id=reading.ven_id,
            reachable=True,
            last_ok_s=now_s,
            out_since_s=None,
            last_error=None,
            programs=tuple(sorted(reading.programs.values())),
            prices=tuple(p for m in mapped for p in m.prices),
            events_in_force=sum(1 for r in in_force if r["cancelled_at"] is None),
        )

    # --- reports ---------------------------------------------------------------------------
    async def _report(self) -> None:
        """Each VTN event running here: a report of every `report_s` since the last one (the
        meter's register at the newest tick), and a last one once it has ended. Reports start
        when the VEN first sees an event running (within `poll_s` of its start)."""
        rec = self.latest()
        meter = rec.snapshot.assets.meter if rec is not None else None
        register = None
        if rec is not None and meter is not None:
            register = rec.snapshot.devices[meter.id].role_reading("energy_import_j")
        if rec is None or register is None or not register.usable:
            return  # no register to report from: said by the meter's own alarms
        # The register as read, at the time it was read (the tick's time less its age).
        now_s, energy_j = rec.wall_time - register.age_s, register.value
        ready = rec.mode == "auto" and not rec.readings.missing
        rows = await asyncio.to_thread(self.ops.db.events_from, SOURCE, now_s)
        running: dict[str, dict[str, Any]] = {}
        for row in rows:
            vtn_id = (row["ref"] or "").split("/")[0]
            # A version stored since the newest tick (a change) runs on: no last report yet.
            started = row["start_s"] <= now_s + STORED_SLACK_S
            if row["cancelled_at"] is None and started and now_s < row["end_s"]:
                running.setdefault(vtn_id, row)
        for vtn_id in sorted(set(running) | set(self._marks)):
            row, mark = running.get(vtn_id), self._marks.get(vtn_id)
            baseline = self.baseline_w(row["id"]) if row is not None else None
            if mark is None:  # reports start from here
                program = self._programs.get(vtn_id)
                if program is not None:
                    self._marks[vtn_id] = _Mark(program, now_s, energy_j, baseline)
                continue
            if row is not None and now_s - mark.time_s < self._periods.get(vtn_id, math.inf):
                continue
            figures = ReportFigures(
                program_id=mark.program_id,
                event_id=vtn_id,
                start_s=mark.time_s,
                end_s=now_s,
                usage_j=max(0.0, energy_j - mark.energy_j),
                baseline_w=baseline if baseline is not None else mark.baseline_w,
                ready=ready,
            )
            if row is None:
                del self._marks[vtn_id]  # over (or cancelled): its last report
            else:
                self._marks[vtn_id] = _Mark(mark.program_id, now_s, energy_j, figures.baseline_w)
            try:
                await self._io(lambda f=figures: self.link.report(f))
            except VtnError as exc:
                self._report_failed(exc)
                return
            self._report_error = None
            self.status = replace(self.status, reports_sent=self.status.reports_sent + 1)

    def _report_failed(self, exc: VtnError) -> None:
        """Counted; logged when its kind changes. Reads say whether the VTN is reachable."""
        if self._report_error != exc.kind:
            log.warning(
                "report not accepted by the VTN",
                extra={"vtn": self.cfg.vtn_url, "kind": exc.kind, "detail": exc.detail},
            )
        self._report_error = exc.kind
        self.status = self.status.counted_error(f"report_{exc.kind}")

    def _change(self, changes: Changes) -> list[Refused]:
        """Cancel, then add: a changed event's old version is gone before its new one counts
        against the bound of planned events."""
        for event_id in changes.cancel:
            self.ops.cancel_event(event_id, self.actor)
            log.info("VTN event cancelled or changed", extra={"event_id": event_id})
        refused = []
        now_s = time.time()
        for w in changes.add:
            # One that began before it was stored here (changed while running, or received
            # late) is in force from now: its M&V and reports start when it did here.
            start_s = max(w.start_s, now_s)
            fields = {"kind": w.kind, "value_w": w.value_w, "start_s": start_s, "end_s": w.end_s}
            try:
                event = EventIn.model_validate(fields)  # an operator's event's checks
                row = self.ops.add_event(event, self.actor, Origin(SOURCE, w.ref, w.revision))
            except (ValidationError, Conflict) as exc:
                refused.append(Refused(w.ref, w.revision, "not_stored", str(exc)[:300]))
                continue
            log.info(
                "VTN event in force",
                extra={"event_id": row["id"], "ref": w.ref, "kind": w.kind, "value_w": w.value_w},
            )
        return refused
