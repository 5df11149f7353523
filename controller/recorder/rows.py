"""What the recorder keeps of a tick: one row of named columns (units in the names), made from
the tick's record. Pure: the tick builds a tuple of floats; the writer thread turns a second
of tuples into columns."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from controller.record import TickRecord

NAN = math.nan

# The site-wide signals, in column order; per-asset columns follow them.
SITE_COLUMNS = (
    "it_w",  # IT load: the UPSs' loads added up
    "cooling_w",
    "site_load_w",  # IT + cooling: what dispatch smooths
    "grid_w",  # measured by the meter (positive = import)
    "grid_target_w",  # dispatch's plan (NaN: no result this tick)
    "plan_w",  # the planner's feed-forward dispatch was given (0: none, or not auto)
    "battery_w",  # measured, all assets (positive = discharge)
    "battery_target_w",
    "frequency_hz",
    "frequency_response_w",
    "unserved_w",
    "shed_w",
    "import_cap_w",  # NaN: no cap in force
    "ramp_up_w_per_s",
    "ramp_down_w_per_s",
    "capacity_wh",  # the assets' capacity known this tick
    "lateness_s",
    "duration_s",
)
ASSET_SUFFIXES = ("power_w", "target_w", "soc")  # measured, setpoint, state of charge


def asset_columns(assets: Sequence[str]) -> list[str]:
    return [f"{a}.{s}" for a in assets for s in ASSET_SUFFIXES]


def schema(assets: Sequence[str]) -> pa.Schema:
    floats = [pa.field(c, pa.float64()) for c in (*SITE_COLUMNS, *asset_columns(assets))]
    return pa.schema(
        [
            pa.field("time_s", pa.float64()),
            pa.field("seq", pa.int64()),
            pa.field("mode", pa.string()),
            *floats,
        ]
    )


def _f(value: float | None) -> float:
    return NAN if value is None else float(value)


def row(rec: TickRecord, assets: Sequence[str]) -> tuple:
    """The tick as a row in `schema(assets)`'s order (cheap: runs inside the tick)."""
    rd, result, cfg = rec.readings, rec.result, rec.in_force.dispatch
    capacity = [b.capacity_wh for b in rec.snapshot.assets.batteries if b.capacity_wh is not None]
    site = (
        _f(rd.it_w),
        _f(rd.cooling_w),
        _f(rec.site_load_w),
        _f(rd.grid_w),
        NAN if result is None else result.grid_target_w,
        rec.decision.plan_w,
        rd.battery_w,
        NAN if result is None else result.battery_w,
        _f(rd.frequency_hz),
        NAN if result is None else result.frequency_response_w,
        NAN if result is None else result.unserved_w,
        rec.in_force.shed_w if result is None else result.shed_request_w,
        _f(cfg.import_cap_w),
        cfg.ramp_up_w_per_s,
        cfg.ramp_down_w_per_s,
        float(sum(capacity)) if capacity else NAN,
        rec.lateness_s,
        rec.duration_s,
    )
    targets = result.asset_w if result is not None else {}
    per_asset: list[float] = []
    for a in assets:
        per_asset += (
            _f(rd.battery_asset_w.get(a)),
            _f(targets.get(a, 0.0 if result is None else None)),
            _f(rd.soc.get(a)),
        )
    return (rec.wall_time, rec.seq, rec.mode, *site, *per_asset)


def columns_batch(
    columns: Mapping[str, np.ndarray], n: int, assets: Sequence[str]
) -> pa.RecordBatch:
    """Whole columns (a replay's arrays) as one batch; a signal not given is unknown (NaN),
    and a mode not given is auto."""
    s = schema(assets)
    arrays = []
    for f in s:
        given = columns.get(f.name)
        if given is None:
            given = np.full(n, "auto") if f.name == "mode" else np.full(n, NAN)
        arrays.append(pa.array(given, type=f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=s)


def batch(rows: Sequence[tuple], assets: Sequence[str]) -> pa.RecordBatch:
    """Rows (as `row` makes them) as one batch of columns."""
    names = schema(assets).names
    columns = dict(zip(names, zip(*rows, strict=True), strict=True)) if rows else {}
    return columns_batch(columns, len(rows), assets)
