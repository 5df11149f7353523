"""A long range drawn with a bounded number of points: each signal's min and max per time
bucket, the buckets widened (two merged into one) whenever the range outgrows them. Streamed:
memory is the buckets', never the rows'."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from controller.report.rows import Rows

BUCKETS = 1000  # a min and a max each: ~2000 points a signal


class Envelope:
    def __init__(self, names: Sequence[str], period_s: float, buckets: int = BUCKETS) -> None:
        self.names = list(names)
        self.bucket_s = period_s
        self.start_s: float | None = None
        self.lo = np.full((len(self.names), buckets), np.nan)
        self.hi = np.full((len(self.names), buckets), np.nan)

    def add_names(self, names: Sequence[str]) -> None:
        """Signals first seen now (an asset's SoC in a later partition)."""
        new = [n for n in names if n not in self.names]
        if new:
            empty = np.full((len(new), self.lo.shape[1]), np.nan)
            self.names += new
            self.lo, self.hi = np.vstack([self.lo, empty]), np.vstack([self.hi, empty])

    def _widen(self) -> None:
        """Every two buckets into one, of twice the width."""
        half = self.lo.shape[1] // 2
        for a, merge in ((self.lo, np.fmin), (self.hi, np.fmax)):
            a[:, :half] = merge(a[:, 0 : 2 * half : 2], a[:, 1 : 2 * half : 2])
            a[:, half:] = np.nan
        self.bucket_s *= 2

    def add(self, rows: Rows) -> None:
        if not rows.count:
            return
        if self.start_s is None:
            self.start_s = float(rows.time_s[0])
        while (rows.time_s[-1] - self.start_s) // self.bucket_s >= self.lo.shape[1]:
            self._widen()
        index = ((rows.time_s - self.start_s) // self.bucket_s).astype(np.int64)
        for k, name in enumerate(self.names):
            values = rows.get(name)
            known = np.isfinite(values)
            np.fmin.at(self.lo[k], index[known], values[known])
            np.fmax.at(self.hi[k], index[known], values[known])

    def result(self) -> dict[str, Any]:
        used = np.flatnonzero(np.isfinite(self.lo).any(axis=0))
        end = int(used[-1]) + 1 if len(used) else 0
        return {
            "start_s": self.start_s,
            "bucket_s": self.bucket_s,
            "series": {
                n: {"min": self.lo[k, :end].tolist(), "max": self.hi[k, :end].tolist()}
                for k, n in enumerate(self.names)
            },
        }
