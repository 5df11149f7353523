"""Workload notices for a replay, from a trace's events file (`*.events.csv`, the format of
`drivers/sim/traces/`): each announced a lead before it happens, as a job scheduler or a
training loop would announce it."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from controller.notices import Notice
from controller.replay.trace import TraceError, number

JOB_KINDS = {"train_ready": "job_start"}
PAUSE_KINDS = {"checkpoint_start": "pause_start", "checkpoint_end": "pause_end"}


@dataclass(frozen=True)
class Announced:
    known_s: float  # when the notice arrives (trace time, s)
    notice: Notice


def read_events(
    path: Path, job_lead_s: float, pause_lead_s: float, job_w: float
) -> tuple[Announced, ...]:
    """train_ready → job_start (drawing job_w), checkpoint_start / checkpoint_end → pause_start
    (with its length: a training loop knows how long its checkpoint takes) / pause_end; other
    kinds are not notices. A job's notice arrives job_lead_s before it, a pause's pause_lead_s."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the events: {exc.strerror or exc}") from None
    reader = csv.DictReader(text.splitlines())
    if not {"kind", "t_start_s"} <= set(reader.fieldnames or []):
        raise TraceError(f"{path}: the header needs kind and t_start_s; it has {reader.fieldnames}")
    rows = []
    for line, row in enumerate(reader, start=2):
        kind = JOB_KINDS.get(row["kind"]) or PAUSE_KINDS.get(row["kind"])
        if kind is not None:
            rows.append((kind, number(row["t_start_s"], f"{path}, line {line}, column t_start_s")))
    out = []
    for i, (kind, at_s) in enumerate(rows):
        duration = None
        if kind == "pause_start":
            ends = [t for k, t in rows[i + 1 :] if k == "pause_end" and t > at_s]
            duration = min(ends) - at_s if ends else None
        power = job_w if kind == "job_start" else None
        lead = job_lead_s if kind in JOB_KINDS.values() else pause_lead_s
        ends_s = at_s + (duration or 0.0)
        out.append(Announced(at_s - lead, Notice(i, kind, at_s, ends_s, duration, power, None)))
    return tuple(out)
