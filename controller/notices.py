"""Workload notices: what the software that runs the GPUs says it will do, and when. A job
scheduler knows a job starts or stops tens of seconds before the GPUs do; a training framework
knows when it will pause for a checkpoint, and for how long. A notice says so.

The shape (`NoticeIn`) and the rules (when a notice may take effect, how long it stays
pending, what a GPU count stands for in W) are pure functions of their inputs. `NoticeBoard`
keeps the pending notices in memory as one immutable tuple, swapped whole when an API change
(stored and audited first, in one transaction) adds or cancels one; each tick reads it without
a lock and without the disk, as `InForce.notices`.

The planner (`controller.planning`, the site's `planner` section) plans from them off the
tick's path; the tick adds its plan's value for the tick's time to the grid target.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from controller.commands import absent_or
from controller.config import NoticeSettings
from controller.opsdb import Actor, Conflict, OpsDB, check_bound

NoticeKind = Literal["job_start", "job_stop", "pause_start", "pause_end", "level_change"]
MAX_DURATION_S = 7 * 86400.0
JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$"  # Slurm's 1234, 1234_7, 1234+1; a run's name


@dataclass(frozen=True)
class Window:
    """When a notice posted at `now_s` may take effect: from `late_s` before to `ahead_s`
    after (the site's `notices` settings)."""

    now_s: float
    late_s: float
    ahead_s: float


class NoticeIn(BaseModel):
    """A workload notice: what changes and when (unix s); optionally how long it lasts, the
    draw expected after it (`power_w`, or `gpus`: not both) and the job it is about. It may
    take effect at most the site's `notices.late_s` (5 s) ago and `notices.ahead_s` (7 days)
    ahead."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    kind: NoticeKind
    at_s: float = Field(ge=0, le=1e11, description="unix time it takes effect, s")
    duration_s: float = absent_or("how long it lasts (a pause, a job), s", gt=0, le=MAX_DURATION_S)
    power_w: float = absent_or(
        "the draw of the workload it is about, once it takes effect, W", ge=0, le=1e10
    )
    gpus: int = absent_or(
        "or that draw as a GPU count: gpus × the site's notices.power_w_per_gpu",
        ge=1,
        le=10_000_000,
    )
    job_id: str = absent_or(
        "the job it is about (letters, digits, . _ : + -)",
        min_length=1,
        max_length=64,
        pattern=JOB_ID,
    )

    @field_validator("at_s")
    @classmethod
    def _in_window(cls, at_s: float, info: ValidationInfo) -> float:
        """Within the window given as context (the controller's check; the API process,
        which does not know the site's window, checks the shape only)."""
        window = (info.context or {}).get("window")
        if not isinstance(window, Window):
            return at_s
        if at_s < window.now_s - window.late_s:
            raise ValueError(
                f"at_s is {window.now_s - at_s:.1f} s in the past; a notice may take effect at "
                f"most notices.late_s ({window.late_s:g} s) before it arrives"
            )
        if at_s > window.now_s + window.ahead_s:
            raise ValueError(
                f"at_s is {at_s - window.now_s:.0f} s ahead; at most notices.ahead_s "
                f"({window.ahead_s:g} s)"
            )
        return at_s

    @field_validator("gpus")
    @classmethod
    def _one_power(cls, gpus: int, info: ValidationInfo) -> int:
        if info.data.get("power_w") is not None:
            raise ValueError("give power_w or gpus, not both")
        return gpus


@dataclass(frozen=True)
class Notice:
    """A pending notice, as a tick sees it."""

    id: int
    kind: str
    at_s: float  # unix time it takes effect
    ends_s: float  # pending until then
    duration_s: float | None
    power_w: float | None  # the draw expected after it, W: as given, or its GPUs' (absent: None)
    job_id: str | None


def ends_at(notice: NoticeIn, late_s: float) -> float:
    """Until when a notice is pending: `late_s` after its time and its duration have passed
    (so one accepted up to `late_s` late is pending when accepted)."""
    return notice.at_s + (notice.duration_s or 0.0) + late_s


def notice_of(row: dict[str, Any], power_w_per_gpu: float) -> Notice:
    """A stored notice as the tick sees it: a GPU count turned into W."""
    power_w = row["power_w"]
    if power_w is None and row["gpus"] is not None:
        power_w = row["gpus"] * power_w_per_gpu
    return Notice(
        row["id"],
        row["kind"],
        row["at_s"],
        row["ends_s"],
        row["duration_s"],
        power_w,
        row["job_id"],
    )


def in_order(notices: Iterable[Notice]) -> tuple[Notice, ...]:
    """By their time, then as made."""
    return tuple(sorted(notices, key=lambda n: (n.at_s, n.id)))


def still_pending(notices: tuple[Notice, ...], now_s: float) -> tuple[Notice, ...]:
    return tuple(n for n in notices if now_s < n.ends_s)


def upcoming(notices: tuple[Notice, ...], now_s: float) -> Notice | None:
    """The next to take effect (of notices in order), if any."""
    return next((n for n in notices if n.at_s >= now_s), None)


def summary(notices: tuple[Notice, ...], now_s: float) -> dict[str, Any]:
    """What /v1/state shows: how many are pending, and the next to take effect."""
    soon = upcoming(notices, now_s)
    return {
        "pending": len(notices),
        "next": None
        if soon is None
        else {
            "id": soon.id,
            "kind": soon.kind,
            "at_s": soon.at_s,
            "lead_s": soon.at_s - now_s,
            "duration_s": soon.duration_s,
            "power_w": soon.power_w,
            "job_id": soon.job_id,
        },
    }


class NotYours(Exception):
    """A workload key asked to cancel a notice another key posted; nothing was changed."""


class NoticeBoard:
    """The pending notices: read by each tick from memory, changed by the API's commands."""

    def __init__(self, db: OpsDB, settings: NoticeSettings, max_pending: int) -> None:
        self.db, self.settings, self.max_pending = db, settings, max_pending
        self._lock = threading.Lock()  # API changes, one at a time; never the tick
        self._value = self._saved()
        # The tick's last answer: (the value it was made from, valid from, valid until, it).
        self._seen: tuple[tuple[Notice, ...], float, float, tuple[Notice, ...]] | None = None

    def _saved(self) -> tuple[Notice, ...]:
        rows = self.db.pending_notices(time.time())
        return in_order(notice_of(row, self.settings.power_w_per_gpu) for row in rows)

    def reload(self) -> None:
        """Take the file's pending notices as those in force (see Operations.reload)."""
        with self._lock:
            self._value = self._saved()

    def add(self, body: dict[str, Any], by: Actor) -> dict[str, Any]:
        """Checked whole, its time against the window around now (a ValidationError names
        `at_s`); Conflict once `limits.max_pending_notices` are pending; stored with its audit
        entry in one transaction, then pending. Its row as stored."""
        s = self.settings
        with self._lock:
            now = time.time()
            window = Window(now, s.late_s, s.ahead_s)
            notice = NoticeIn.model_validate(body, context={"window": window})
            live = still_pending(self._value, now)
            what, remedy = "notices are pending", "cancel one, or wait for one to pass"
            check_bound(len(live), self.max_pending, what, "limits.max_pending_notices", remedy)
            with self.db.transaction():
                fields = notice.model_dump(exclude_none=True)
                row = self.db.add_notice(fields, ends_at(notice, s.late_s), by)
                self.db.audit(by, "notice.create", None, row)
            self._value = in_order((*live, notice_of(row, s.power_w_per_gpu)))
            return row

    def cancel(self, notice_id: int, by: Actor) -> dict[str, Any] | None:
        """Stored with its audit entry in one transaction, then no longer pending. None when
        there is no such notice or it was cancelled before; NotYours for a workload key and
        another key's notice; Conflict once it is over. Its row as cancelled."""
        with self._lock:
            row = self.db.row("notices", notice_id)
            if row is None or row["cancelled_at"] is not None:
                return None
            if by.role == "workload" and row["created_by"] != by.label:
                raise NotYours(
                    f"notice {notice_id} was posted by another key; a workload key cancels "
                    "only the notices it posted"
                )
            if row["ends_s"] <= time.time():
                raise Conflict(
                    f"notice {notice_id} is over (pending until {row['ends_s']:.1f}, unix s)"
                )
            with self.db.transaction():
                cancelled = self.db.cancel_notice(notice_id)
                self.db.audit(by, "notice.cancel", row, cancelled)
            self._value = tuple(n for n in self._value if n.id != notice_id)
            return cancelled

    def pending(self, now_s: float) -> tuple[Notice, ...]:
        """The tick's read (no lock, no disk): the notices pending at `now_s`, in order. The
        same tuple tick after tick until one is added, cancelled or passes."""
        value, seen = self._value, self._seen
        if seen is not None and seen[0] is value and seen[1] <= now_s < seen[2]:
            return seen[3]
        live = still_pending(value, now_s)
        until = min((n.ends_s for n in live), default=float("inf"))
        self._seen = (value, now_s, until, live)
        return live
