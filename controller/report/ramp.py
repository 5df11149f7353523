"""Ramp per window: the largest |grid(t + w) − grid(t)| over each window w, streamed.

Each sample is paired with the sample nearest t + w if one lies within half a tick of it (a
missed tick leaves its pairs out rather than pairing the wrong ones); no pair spans a gap. The
tail of each chunk waits for the next one, so windows across chunk boundaries count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.report.rows import MAX_FILL_S, Rows

WINDOWS_S = (0.1, 1.0, 10.0, 60.0)
# |Δgrid| histogram: 0–1 W, then ten bins a decade up to 10 GW (the last also holds more).
HISTOGRAM_EDGES_W = np.r_[0.0, np.logspace(0.0, 10.0, 101)]
# A change a billionth over the limit is the float rounding of one exactly at it.
FLOAT_TOLERANCE = 1e-9


@dataclass
class _Window:
    window_s: float
    limit_w: float | None
    paired_until_s: float = -np.inf  # every sample up to here has been paired (or skipped)
    pairs: int = 0
    within: int = 0
    max_w: float = -np.inf
    max_at_s: float = np.nan
    counts: np.ndarray = field(default_factory=lambda: np.zeros(len(HISTOGRAM_EDGES_W) - 1, int))

    def add(self, start_s: np.ndarray, change_w: np.ndarray) -> None:
        if not len(change_w):
            return
        self.pairs += len(change_w)
        if self.limit_w is not None:
            self.within += int(np.sum(change_w <= self.limit_w * (1 + FLOAT_TOLERANCE)))
        k = int(np.argmax(change_w))
        if change_w[k] > self.max_w:
            self.max_w, self.max_at_s = float(change_w[k]), float(start_s[k])
        clipped = np.minimum(change_w, HISTOGRAM_EDGES_W[-1])
        self.counts += np.histogram(clipped, HISTOGRAM_EDGES_W)[0]

    def result(self) -> dict[str, Any]:
        found = self.pairs > 0
        return {
            "window_s": self.window_s,
            "pairs": self.pairs,
            "max_w": self.max_w if found else None,
            "max_rate_w_per_s": self.max_w / self.window_s if found else None,
            "max_at_s": self.max_at_s if found else None,
            "limit_w": self.limit_w,
            "within_limit_ratio": (
                self.within / self.pairs if found and self.limit_w is not None else None
            ),
        }

    def histogram(self) -> dict[str, Any]:
        """The non-empty stretch of the histogram."""
        nonzero = np.flatnonzero(self.counts)
        lo, hi = (nonzero[0], nonzero[-1] + 1) if len(nonzero) else (0, 0)
        return {
            "window_s": self.window_s,
            "edges_w": HISTOGRAM_EDGES_W[lo : hi + 1].tolist() if hi else [],
            "counts": self.counts[lo:hi].tolist(),
            "limit_w": self.limit_w,
        }


def pair_changes(
    time_s: np.ndarray, grid_w: np.ndarray, first: int, last: int, window_s: float, half_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """|grid(partner) − grid(i)| for samples first..last-1 whose partner (the sample nearest
    t_i + window_s) is within half_s of it and no gap lies between; with their start times."""
    i = np.arange(first, last)
    target = time_s[i] + window_s
    j = np.searchsorted(time_s, target)
    before = np.clip(j - 1, 0, len(time_s) - 1)
    after = np.clip(j, 0, len(time_s) - 1)
    nearer = np.abs(time_s[after] - target) < np.abs(time_s[before] - target)
    partner = np.where(nearer, after, before)
    segment = np.r_[0, np.cumsum(np.diff(time_s) > MAX_FILL_S)]  # which stretch between gaps
    ok = (
        (np.abs(time_s[partner] - target) <= half_s)
        & (partner > i)
        & (segment[partner] == segment[i])
    )
    return time_s[i[ok]], np.abs(grid_w[partner[ok]] - grid_w[i[ok]])


class RampFigures:
    """Streams rows; `result` gives each window's largest change and share within its limit."""

    def __init__(self, period_s: float, limits_w: Mapping[float, float | None]) -> None:
        if unknown := set(limits_w) - set(WINDOWS_S):
            raise ValueError(f"ramp limits for windows {sorted(unknown)} s; there are {WINDOWS_S}")
        self.half_s = period_s / 2
        self.windows = [_Window(w, limits_w.get(w)) for w in WINDOWS_S]
        self.time_s = np.empty(0)
        self.grid_w = np.empty(0)

    def add(self, rows: Rows) -> None:
        grid = rows.get("grid_w")
        known = np.isfinite(grid)  # a NaN reading is as good as a missed tick
        self.time_s = np.r_[self.time_s, rows.time_s[known]]
        self.grid_w = np.r_[self.grid_w, grid[known]]
        self._pair(final=False)

    def _pair(self, final: bool) -> None:
        t, g = self.time_s, self.grid_w
        if not len(t):
            return
        keep_from = len(t)
        for win in self.windows:
            # Samples whose every possible partner has arrived (all of them at the end).
            done = len(t) if final else int(np.searchsorted(t, t[-1] - win.window_s - self.half_s))
            first = int(np.searchsorted(t, win.paired_until_s, side="right"))
            if done > first:
                win.add(*pair_changes(t, g, first, done, win.window_s, self.half_s))
                win.paired_until_s = float(t[done - 1])
            keep_from = min(keep_from, max(first, done))
        self.time_s, self.grid_w = t[keep_from:], g[keep_from:]

    def result(self) -> list[dict[str, Any]]:
        self._pair(final=True)
        return [w.result() for w in self.windows]

    def histograms(self) -> list[dict[str, Any]]:
        self._pair(final=True)
        return [w.histogram() for w in self.windows]
