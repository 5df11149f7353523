"""Reading the recorder: rows of a time range, one partition at a time (a day at 10 Hz is
864,000 rows: consumers stream, nothing loads a whole range), and the folder's meta data."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from controller.config import DispatchConfig
from controller.recorder.files import iter_tables
from drivers.private import private_dir, write_private

RECORDER_DIR = "recorder"  # under the data folder
META_FILE = "meta.json"
FORMAT = 1


class RecorderDataError(ValueError):
    """A folder that holds no recorder data, or data of a format this version cannot read."""


def site_meta(
    site: str, period_s: float, dispatch: DispatchConfig, assets: Sequence[str]
) -> dict[str, Any]:
    """What a reader of the rows needs to know of the site that wrote them."""
    return {
        "format": FORMAT,
        "site": site,
        "period_s": period_s,
        "frequency": {
            "nominal_hz": dispatch.nominal_frequency_hz,
            "droop": dispatch.droop,
            "deadband_hz": dispatch.deadband_hz,
            "full_response_w": dispatch.frequency_response_w,
        },
        "assets": list(assets),
    }


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    write_private(private_dir(folder) / META_FILE, json.dumps(meta, indent=1).encode())


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecorderDataError(f"{folder}: no recorder data here ({META_FILE} missing)") from None
    except (OSError, ValueError) as exc:
        raise RecorderDataError(f"{path}: unreadable: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RecorderDataError(f"{path}: format {meta.get('format')!r}, this reads {FORMAT}")
    return meta


def _columns(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    """The named columns, in order; one a partition lacks (the site had other assets then)
    comes back as nulls of float64."""
    arrays = [
        table.column(c) if c in table.column_names else pa.nulls(table.num_rows, pa.float64())
        for c in columns
    ]
    return pa.table(arrays, names=list(columns))


def in_order(times: np.ndarray, after_s: float = -np.inf) -> np.ndarray:
    """True for each row whose time is after every row's before it (from `after_s`): what a
    wall clock stepped back, or a batch written twice, adds is False. NaN times are False."""
    finite = np.isfinite(times)
    before = np.maximum.accumulate(np.r_[after_s, np.where(finite, times, -np.inf)])[:-1]
    return finite & (times > before)


def read_tables(
    folder: Path,
    from_s: float | None = None,
    to_s: float | None = None,
    columns: Sequence[str] | None = None,
) -> Iterator[pa.Table]:
    """Rows with from_s <= time_s < to_s, one table per partition, in time order; `columns`
    (time_s always first) or all of each partition's."""
    wanted = None if columns is None else list(dict.fromkeys(["time_s", *columns]))
    for table in iter_tables(folder, from_s, to_s, wanted):
        times = table.column("time_s")
        mask = None
        if from_s is not None:
            mask = pc.greater_equal(times, from_s)
        if to_s is not None:
            upper = pc.less(times, to_s)
            mask = upper if mask is None else pc.and_(mask, upper)
        if mask is not None:
            table = table.filter(mask)
        if wanted is not None:
            table = _columns(table, wanted)
        if table.num_rows:
            yield table


def read_table(
    folder: Path,
    from_s: float | None = None,
    to_s: float | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table | None:
    """A short range as one table (a capture's window), None if it holds no rows."""
    tables = list(read_tables(folder, from_s, to_s, columns))
    return pa.concat_tables(tables, promote_options="default") if tables else None


def recent_columns(
    folder: Path, from_s: float, to_s: float, columns: Sequence[str], max_points: int
) -> dict[str, list[float | None]]:
    """The columns over [from_s, to_s) as JSON lists (NaN as null), every k-th row so that at
    most `max_points` remain; empty lists where the recorder holds nothing yet."""
    table = read_table(folder, from_s, to_s, columns)
    if table is None:
        return {c: [] for c in ["time_s", *columns]}
    step = -(-table.num_rows // max_points)  # ceiling: at most max_points rows
    table = table.take(list(range(0, table.num_rows, step))) if step > 1 else table
    out: dict[str, list[float | None]] = {}
    for name in table.column_names:
        values = table.column(name).to_numpy(zero_copy_only=False).astype(float)
        out[name] = [None if v != v else float(v) for v in values]
    return out
