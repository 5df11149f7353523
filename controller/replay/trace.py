"""Power traces for replay: read, checked row by row, turned into a site load."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REQUIRED = ("t_s", "gpu_power_w")
STEP_TOLERANCE = 0.01  # a step may differ from the median step by 1 %


class TraceError(ValueError):
    """A trace that cannot be replayed; the message names the file, line and column."""


@dataclass(frozen=True)
class Trace:
    source: str
    t_s: np.ndarray
    gpu_power_w: np.ndarray

    @property
    def dt_s(self) -> float:
        return float(np.median(np.diff(self.t_s)))

    def starting_at(self, from_s: float) -> Trace:
        """The trace from `from_s` on (e.g. once training has started)."""
        keep = self.t_s >= from_s
        if keep.sum() < 2:
            raise TraceError(
                f"{self.source}: fewer than two rows at or after {from_s} s "
                f"(the trace ends at {self.t_s[-1]} s)"
            )
        return Trace(self.source, self.t_s[keep], self.gpu_power_w[keep])

    def site_load_w(self, gpus: int, base_w: float) -> np.ndarray:
        """Synchronous training: every GPU swings together."""
        return base_w + gpus * self.gpu_power_w


def number(text: str | None, where: str) -> float:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        raise TraceError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TraceError(f"{where}: {text!r} is not a finite number")
    return value


def read_trace(path: Path) -> Trace:
    try:
        text = path.read_text()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the trace: {exc.strerror or exc}") from None
    reader = csv.DictReader(text.splitlines())
    columns = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise TraceError(f"{path}: missing column(s) {missing}; the header has {columns}")
    t, p = [], []
    for line, row in enumerate(reader, start=2):
        t.append(number(row["t_s"], f"{path}, line {line}, column t_s"))
        p.append(number(row["gpu_power_w"], f"{path}, line {line}, column gpu_power_w"))
        if p[-1] < 0:
            raise TraceError(f"{path}, line {line}, column gpu_power_w: {p[-1]} W is negative")
        if len(t) > 1 and t[-1] <= t[-2]:
            raise TraceError(
                f"{path}, line {line}, column t_s: {t[-1]} s is not after the previous {t[-2]} s"
            )
    if len(t) < 2:
        raise TraceError(f"{path}: a trace needs at least two rows, found {len(t)}")
    steps = np.diff(t)
    dt = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - dt) > STEP_TOLERANCE * dt)
    if uneven.size:
        i = int(uneven[0])
        raise TraceError(
            f"{path}, line {i + 3}, column t_s: step {steps[i]:.6g} s differs from the trace's "
            f"{dt:.6g} s by more than {STEP_TOLERANCE:.0%}"
        )
    return Trace(str(path), np.array(t), np.array(p))
