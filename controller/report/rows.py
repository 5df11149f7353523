"""The recorder's rows as the report's parts read them: one chunk (a partition) at a time, each
column as float64 (NaN: unknown), and where the record has a gap."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from controller.recorder.reader import in_order

# A hole in the record longer than this is a gap: the spectrum restarts after it and no ramp
# pair or event spans it. Shorter holes (a missed tick, a NaN reading) are filled or skipped.
MAX_FILL_S = 1.0

Chunk = pa.Table | Mapping[str, Any]


@dataclass(frozen=True)
class Rows:
    """One chunk's numeric columns; `get` gives NaN for a column the chunk lacks."""

    columns: Mapping[str, np.ndarray]
    count: int
    out_of_order: int = 0  # rows dropped: not after the row before (a clock stepped back)

    @property
    def time_s(self) -> np.ndarray:
        return self.columns["time_s"]

    def get(self, name: str) -> np.ndarray:
        column = self.columns.get(name)
        return np.full(self.count, np.nan) if column is None else column

    def names_ending(self, suffix: str) -> list[str]:
        return [n for n in self.columns if n.endswith(suffix)]


def _floats(values: Any) -> np.ndarray | None:
    """A column as float64 (nulls as NaN); None for one that holds no numbers (mode)."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
            return None if not pa.types.is_null(values.type) else np.full(len(values), np.nan)
        values = values.to_numpy(zero_copy_only=False)
    array = np.asarray(values)
    if array.dtype.kind not in "iuf":
        return None
    return array.astype(np.float64, copy=False)


def as_rows(chunk: Chunk, after_s: float = -np.inf) -> Rows:
    """A chunk's numeric columns, in time order: rows without a time are dropped, and so are
    rows not after every row before them (from `after_s`, the previous chunk's last: a wall
    clock stepped back, or a batch written twice), counted in `out_of_order`. Every part
    assumes time order. ValueError for a chunk without a time column."""
    names = chunk.column_names if isinstance(chunk, pa.Table) else list(chunk)
    if "time_s" not in names:
        raise ValueError(f"a chunk has no time_s column (it has {names})")
    columns: dict[str, np.ndarray] = {}
    for name in names:
        values = _floats(chunk.column(name) if isinstance(chunk, pa.Table) else chunk[name])
        if values is not None:
            columns[name] = values
    t = columns["time_s"]
    keep = in_order(t, after_s)
    dropped = int(np.sum(np.isfinite(t) & ~keep))
    if not keep.all():
        columns = {n: v[keep] for n, v in columns.items()}
    return Rows(columns, len(columns["time_s"]), dropped)


def gaps_before(time_s: np.ndarray, last_s: float) -> np.ndarray:
    """True at each row that follows a gap (a hole over MAX_FILL_S after the row before it,
    the first row's being `last_s`, NaN at the start of the record)."""
    before = np.r_[last_s, time_s[:-1]] if len(time_s) else time_s
    return (time_s - before) > MAX_FILL_S
