"""Disturbance captures: when a trigger fires (see `triggers`), the recorder's rows from
`pre_s` before it to `post_s` after it are kept as one capture, exported as COMTRADE
(`<id>.cfg` + `<id>.dat`) with a `<id>.json` that lists it, under the data folder's
`captures/`. The tick only notes the trigger; the export runs on the recorder's writer thread
once the window has passed (after the rows it needs: that thread writes them first)."""

from __future__ import annotations

import json
import logging
import queue
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from controller.config import CaptureConfig
from controller.record import TickRecord
from controller.recorder.comtrade import export_comtrade, write_comtrade
from controller.recorder.files import partition_name
from controller.recorder.reader import in_order, read_table
from controller.recorder.recorder import Recorder
from controller.recorder.triggers import TickFacts, Trigger, TriggerConfig, TriggerState, step
from drivers.private import write_private

log = logging.getLogger("gridpilot.captures")
CAPTURES_DIR = "captures"  # under the data folder
CAPTURE_ID = r"[0-9]{8}T[0-9]{6}\.[0-9]{3}Z-[a-z_]+"  # the trigger's time (UTC) and cause
DEVICE = "gridpilot"  # the recording device, as COMTRADE names it
MAX_REQUESTS = 16  # operators' requests waiting for the next tick; more are refused
# Devices still connecting at a start (mode degraded) are no disturbance: captures begin with
# the first tick that has every device's data, or this long after the first tick.
START_GRACE_S = 10.0


@dataclass(frozen=True)
class Capture:
    """One capture as listed (`<id>.json`)."""

    id: str
    cause: str
    detail: str
    trigger_s: float
    from_s: float
    to_s: float
    rows: int = 0
    complete: bool = True  # False: cut short by a shutdown before its window ended
    requested_by: str | None = None

    def files(self) -> dict[str, str]:
        return {"cfg": f"{self.id}.cfg", "dat": f"{self.id}.dat"}


class TooManyRequests(Exception):
    """Operators asked for more captures than the ticks take up."""


class CaptureKeeper:
    def __init__(
        self, folder: Path, recorder: Recorder, cfg: CaptureConfig, site: str, nominal_hz: float
    ) -> None:
        self.folder, self.recorder, self.cfg, self.site = folder, recorder, cfg, site
        self.triggers = TriggerConfig(
            nominal_hz=nominal_hz,
            excursion_hz=cfg.frequency_threshold_hz,
            pre_s=cfg.pre_s,
            post_s=cfg.post_s,
        )
        self._state = TriggerState()
        self._pending: list[tuple[Trigger, str | None]] = []
        self._requests: queue.Queue[tuple[str, str]] = queue.Queue(MAX_REQUESTS)
        self.made_total: Counter[str] = Counter()  # exported, by cause
        self._first_tick_at: float | None = None
        self._watching = False

    @property
    def waiting_full(self) -> bool:
        return self._requests.full()

    def request(self, reason: str, by: str) -> dict[str, Any]:
        """An operator's capture (the API's command thread): taken by the next tick."""
        try:
            self._requests.put_nowait((reason, by))
        except queue.Full:
            raise TooManyRequests(f"{MAX_REQUESTS} capture requests already wait") from None
        return {"accepted": True, "pre_s": self.cfg.pre_s, "post_s": self.cfg.post_s}

    def observe(self, rec: TickRecord, alarms: frozenset[str]) -> None:
        """In the tick: new triggers noted, captures whose window has passed handed over."""
        if not self._watching:
            self._first_tick_at = self._first_tick_at or rec.monotonic
            starting = rec.monotonic - self._first_tick_at < START_GRACE_S
            if rec.mode == "degraded" and starting:
                return
            self._watching = True
        asked = None
        if not self._requests.empty():
            asked = self._requests.get_nowait()
        facts = TickFacts(
            time_s=rec.wall_time,
            frequency_hz=rec.readings.frequency_hz,
            mode=rec.mode,
            alarms=alarms,
            events=rec.in_force.events,
            operator_request=asked[0] if asked else None,
        )
        self._state, fired = step(self._state, self.triggers, facts)
        for t in fired:
            self._pending.append((t, asked[1] if asked and t.cause == "operator" else None))
        due = [p for p in self._pending if rec.wall_time >= p[0].time_s + self.cfg.post_s]
        if due:
            self._pending = [p for p in self._pending if p not in due]
            self._hand_over(due, complete=True)

    def close(self) -> None:
        """At shutdown: captures still open are kept with the rows there are (before the
        recorder closes)."""
        pending, self._pending = self._pending, []
        self._hand_over(pending, complete=False)

    def _hand_over(self, due: list[tuple[Trigger, str | None]], complete: bool) -> None:
        self.recorder.hand_over()  # the rows first: the same thread writes them, in order
        for trigger, by in due:
            capture = Capture(
                id=f"{partition_name(trigger.time_s)}-{trigger.cause}",
                cause=trigger.cause,
                detail=trigger.detail,
                trigger_s=trigger.time_s,
                from_s=trigger.time_s - self.cfg.pre_s,
                to_s=trigger.time_s + self.cfg.post_s,
                complete=complete,
                requested_by=by,
            )
            self.recorder.writer.put(lambda c=capture: self._export(c), f"capture {capture.id}")

    def _export(self, c: Capture) -> None:
        """On the recorder's writer: the window's rows as COMTRADE, then the listing."""
        table = read_table(self.recorder.folder, c.from_s, c.to_s)
        if table is not None:  # COMTRADE's times only go forward (a clock may step back)
            table = table.filter(pa.array(in_order(table.column("time_s").to_numpy())))
        if table is None or not table.num_rows:
            log.warning("capture has no rows", extra={"capture": c.id})
            return
        export = export_comtrade(
            table,
            station=self.site,
            device=DEVICE,
            trigger_s=c.trigger_s,
            nominal_hz=self.triggers.nominal_hz,
        )
        write_comtrade(export, self.folder, c.id)
        done = Capture(**{**asdict(c), "rows": table.num_rows})
        listing = {**asdict(done), "files": done.files()}
        write_private(self.folder / f"{c.id}.json", json.dumps(listing, indent=1).encode())
        self.made_total[c.cause] += 1
        log.info("capture kept", extra={"capture": c.id, "rows": table.num_rows})
        self._keep_newest()

    def _keep_newest(self) -> None:
        listed = sorted(self.folder.glob("*.json"))
        for old in listed[: max(0, len(listed) - self.cfg.max_count)]:
            for suffix in (".cfg", ".dat", ".json"):
                old.with_suffix(suffix).unlink(missing_ok=True)


def list_captures(folder: Path, limit: int, before: str | None = None) -> list[dict[str, Any]]:
    """Captures newest first (by id: the trigger's time), `limit` of them, before `before`."""
    ids = sorted((p.stem for p in folder.glob("*.json") if re.fullmatch(CAPTURE_ID, p.stem)),
                 reverse=True)  # fmt: skip
    out: list[dict[str, Any]] = []
    for cid in ids:
        if before is not None and cid >= before:
            continue
        try:
            out.append(json.loads((folder / f"{cid}.json").read_text()))
        except (FileNotFoundError, ValueError):  # removed or half there: not listed
            continue
        if len(out) == limit:
            break
    return out


def capture_file(folder: Path, capture_id: str, part: str) -> Path | None:
    """One file of a listed capture, or None (an id that is no capture's names no file)."""
    if not re.fullmatch(CAPTURE_ID, capture_id) or part not in ("cfg", "dat"):
        return None
    path = folder / f"{capture_id}.{part}"
    return path if path.is_file() and (folder / f"{capture_id}.json").is_file() else None
