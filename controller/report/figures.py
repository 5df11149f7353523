"""The compliance report's figures from the recorder's rows, in one pass over the range.

`build_report` reads the rows chunk by chunk (a partition at a time, in time order, as
`controller.recorder.reader.read_tables` yields them); each part (ramp, spectrum, events,
battery, the plots' envelope) keeps only what it needs between chunks, so a day's range never
sits in memory whole. No I/O here: the caller reads and writes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from controller.replay.figures import BAND_HZ
from controller.report.battery import SOC_SUFFIX, BatteryFigures
from controller.report.checks import (
    attenuation_check,
    band_checks,
    overall,
    ramp_checks,
    response_checks,
)
from controller.report.envelope import Envelope
from controller.report.events import Droop, EventFigures
from controller.report.profile import Profile
from controller.report.ramp import RampFigures
from controller.report.rows import Chunk, as_rows
from controller.report.spectrum import BandSpec, SpectrumFigures

FORMAT = 1
TRAINING_BAND_HZ = (0.2, 3.0)  # DESIGN.md: where training iterations sit
# What the report reads of each row; per-asset SoC columns follow (`report_columns`).
COLUMNS = (
    "time_s",
    "seq",
    "it_w",
    "grid_w",
    "battery_w",
    "battery_target_w",
    "frequency_hz",
    "frequency_response_w",
    "unserved_w",
    "import_cap_w",
    "capacity_wh",
)
PLOTTED = ("it_w", "grid_w")


def report_columns(meta: Mapping[str, Any]) -> list[str]:
    """The columns to read for the report (the reader's `columns`), given the recorder's meta."""
    assets = meta.get("assets") or {}
    return [*COLUMNS, *(f"{a}{SOC_SUFFIX}" for a in assets)]


def bands(profile: Profile) -> list[BandSpec]:
    """0.1–20 Hz (with the profile's share limit) and 0.2–3 Hz, then the profile's own bands;
    a profile band on the same edges as the 0.2–3 Hz one takes its place."""
    own = [BandSpec(b.name, b.low_hz, b.high_hz, b.share_max_ratio) for b in profile.bands]
    training = (
        []
        if any((b.low_hz, b.high_hz) == TRAINING_BAND_HZ for b in own)
        else [BandSpec("0.2-3 Hz", *TRAINING_BAND_HZ)]
    )
    return [BandSpec("0.1-20 Hz", *BAND_HZ, profile.band_share_max_ratio), *training, *own]


def period_of(meta: Mapping[str, Any]) -> float:
    period = meta.get("period_s")
    if not isinstance(period, int | float) or not 0 < period <= 60 or not math.isfinite(period):
        raise ValueError(
            f"meta.json: period_s must be a number of seconds in (0, 60], not {period!r}"
        )
    return float(period)


def jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars as Python's, NaN and ±inf as None, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_report(
    chunks: Iterable[Chunk],
    meta: Mapping[str, Any],
    profile: Profile,
    captures: Sequence[Mapping[str, Any]] = (),
    plots: bool = False,
) -> dict[str, Any]:
    """The report over `chunks` (pyarrow Tables or dicts of arrays, in time order), as JSON-able
    data with units in its keys; with `plots`, also what `html.render` draws (downsampled)."""
    period = period_of(meta)
    ramp = RampFigures(period, profile.ramp_limits_w())
    spectrum = SpectrumFigures(period, bands(profile))
    events = EventFigures(period, Droop.from_meta(meta), profile.frequency_event_threshold_hz)
    battery = BatteryFigures(period)
    envelope = Envelope(PLOTTED, period) if plots else None
    first_s = last_s = math.nan
    count = out_of_order = 0
    for chunk in chunks:
        rows = as_rows(chunk, after_s=last_s if count else -math.inf)
        out_of_order += rows.out_of_order
        if not rows.count:
            continue
        first_s = first_s if count else float(rows.time_s[0])
        last_s, count = float(rows.time_s[-1]), count + rows.count
        for part in (ramp, spectrum, events, battery):
            part.add(rows)
        if envelope is not None:
            envelope.add_names(rows.names_ending(SOC_SUFFIX))
            envelope.add(rows)
    ramp_result, spectrum_result = ramp.result(), spectrum.result()
    events_result = events.result() | {"captures": [dict(c) for c in captures]}
    checks = [
        *ramp_checks(ramp_result, profile.required_share_ratio),
        *attenuation_check(spectrum_result["bands"][0], profile.band_attenuation_max_db),
        *band_checks(spectrum_result["bands"]),
        *response_checks(events_result["frequency"], profile),
    ]
    expected_rows = round((last_s - first_s) / period) + 1 if count else 0
    report: dict[str, Any] = {
        "format": FORMAT,
        "site": meta.get("site"),
        "range": {
            "from_s": first_s,
            "to_s": last_s + period,
            "duration_s": last_s - first_s + period,
            "period_s": period,
            "rows": count,
            "missing_rows": max(expected_rows - count, 0),
            "out_of_order_rows": out_of_order,  # dropped: not after the row before
        },
        "profile": profile.model_dump(mode="json"),
        "result": overall(checks),
        "checks": checks,
        "ramp": ramp_result,
        "spectrum": spectrum_result,
        "events": events_result,
        "battery": battery.result(),
    }
    if envelope is not None:
        report["plots"] = {
            "envelope": envelope.result(),
            "spectrum": spectrum.plot(),
            "ramp_histograms": ramp.histograms(),
        }
    return jsonable(report)
