"""Runs of rows that belong together (one frequency excursion, one import cap in force),
found chunk by chunk: a run still open at a chunk's end is joined to its continuation in the
next chunk, so an event across a partition boundary is reported once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, Self

import numpy as np

from controller.report.rows import Rows, gaps_before


class Mergeable(Protocol):
    def merge(self, later: Self) -> Self: ...


def run_bounds(key: np.ndarray, breaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each run of equal, non-NaN `key`; a break starts a new one."""
    valid = ~np.isnan(key)
    prev_valid = np.r_[False, valid[:-1]]
    changed = np.r_[True, key[1:] != key[:-1]]
    new = valid & (~prev_valid | changed | breaks)
    boundary = np.flatnonzero(new | ~valid)
    starts = np.flatnonzero(new)
    after = np.searchsorted(boundary, starts, side="right")
    ends = np.where(after < len(boundary), boundary[np.minimum(after, len(boundary) - 1)], len(key))
    return starts, ends


class RunStream[S: Mergeable]:
    """Runs of a key (NaN: no run) across chunks, each summarised by `summarise(rows, start,
    end)`; `wanted` picks the runs to summarise (the ones at a chunk's edge always are) and
    `keep` the finished ones to report."""

    def __init__(
        self,
        key: Callable[[Rows], np.ndarray],
        summarise: Callable[[Rows, int, int], S],
        keep: Callable[[S], bool] = lambda _: True,
        wanted: Callable[[Rows, np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.key, self.summarise, self.keep, self.wanted = key, summarise, keep, wanted
        self.open: S | None = None
        self.open_key = np.nan
        self.last_s = np.nan
        self.done: list[S] = []

    def _close(self, run: S) -> None:
        if self.keep(run):
            self.done.append(run)

    def add(self, rows: Rows) -> None:
        if not rows.count:
            return
        key = self.key(rows)
        breaks = gaps_before(rows.time_s, self.last_s)
        self.last_s = float(rows.time_s[-1])
        starts, ends = run_bounds(key, breaks)
        pick = np.ones(len(starts), bool)
        if self.wanted is not None and len(starts):
            pick = self.wanted(rows, starts, ends)
            pick[0] = pick[-1] = True
        continues = (
            self.open is not None
            and len(starts) > 0
            and starts[0] == 0
            and key[0] == self.open_key
            and not breaks[0]
        )
        if self.open is not None and not continues:
            self._close(self.open)
        earlier, self.open = (self.open if continues else None), None
        for n in np.flatnonzero(pick):
            s, e = int(starts[n]), int(ends[n])
            run = self.summarise(rows, s, e)
            if n == 0 and earlier is not None:
                run = earlier.merge(run)
            if e == rows.count:  # may go on in the next chunk
                self.open, self.open_key = run, key[s]
            else:
                self._close(run)

    def finish(self) -> list[S]:
        if self.open is not None:
            self._close(self.open)
            self.open = None
        return self.done
