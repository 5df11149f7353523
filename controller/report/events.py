"""Events in the record: frequency excursions (with the site's response against its droop) and
the import caps in force (with how well the grid kept under them), streamed chunk by chunk.

An excursion is a run of ticks with |f − nominal| beyond the deadband, on one side, that
reaches the profile's threshold somewhere. The droop's expected power at a tick is
clip((|Δf| − deadband) / (droop · nominal), 0, 1) · full_response_w, as the dispatch core
computes it. The response delivered is measured: the batteries' measured power beyond the
smoothing part of their setpoint (battery_w − (battery_target_w − frequency_response_w)), so a
battery slow to follow shows as a late or short response; where the setpoint is not recorded,
the commanded response stands in. It counts toward the expected power when it has the right
sign (positive, the site draws less, under nominal). Response time: from the excursion's first
tick to the first tick whose response reached 90 % of the expected power. Delivered share: the
response's energy over the expected energy across the excursion (an unknown response counts as
none). A frequency reading missing for up to MAX_FILL_S does not split an excursion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from controller.report.ramp import FLOAT_TOLERANCE
from controller.report.rows import MAX_FILL_S, Rows
from controller.report.runs import RunStream

RESPONSE_REACHED_RATIO = 0.9


def delivered_w(rows: Rows) -> np.ndarray:
    """The frequency response as measured: the batteries' power beyond the smoothing part of
    their setpoint; the commanded response where no setpoint was recorded (a replay)."""
    commanded = rows.get("frequency_response_w")
    smoothing = rows.get("battery_target_w") - commanded
    measured = rows.get("battery_w") - smoothing
    return np.where(np.isnan(rows.get("battery_target_w")), commanded, measured)


def fill_forward(values: np.ndarray, holes: np.ndarray, limit: int) -> np.ndarray:
    """`values` with the first `limit` holes (True in `holes`) of each run given the value
    before them; the rest of a longer run stays as it is."""
    out = values.copy()
    run = 0
    for i in np.flatnonzero(holes):
        run = run + 1 if i > 0 and holes[i - 1] else 1
        if i > 0 and run <= limit:
            out[i] = out[i - 1]
    return out


@dataclass(frozen=True)
class Droop:
    nominal_hz: float
    droop: float
    deadband_hz: float
    full_response_w: float

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Droop | None:
        """The recorder's `frequency` section; None where it has none (no events then)."""
        section = meta.get("frequency")
        if not isinstance(section, Mapping):
            return None
        try:
            return cls(*(float(section[k]) for k in cls.__dataclass_fields__))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"meta.json: frequency section unusable: {exc!r}") from None

    def expected_w(self, frequency_hz: np.ndarray) -> np.ndarray:
        beyond = np.abs(frequency_hz - self.nominal_hz) - self.deadband_hz
        share = np.clip(beyond / (self.droop * self.nominal_hz), 0.0, 1.0)
        return np.nan_to_num(share) * self.full_response_w


@dataclass(frozen=True)
class Excursion:
    start_s: float
    last_s: float  # its last tick beyond the deadband
    side: float  # −1 under nominal, +1 over
    max_deviation_hz: float
    extreme_hz: float  # nadir (under) or peak (over)
    reached_s: float  # first tick the response reached 90 % of the expected; NaN: never
    delivered_ws: float
    expected_ws: float

    def merge(self, later: Excursion) -> Excursion:
        pick = min if self.side < 0 else max
        return replace(
            self,
            last_s=later.last_s,
            max_deviation_hz=max(self.max_deviation_hz, later.max_deviation_hz),
            extreme_hz=pick(self.extreme_hz, later.extreme_hz),
            reached_s=self.reached_s if np.isfinite(self.reached_s) else later.reached_s,
            delivered_ws=self.delivered_ws + later.delivered_ws,
            expected_ws=self.expected_ws + later.expected_ws,
        )

    def result(self, period_s: float) -> dict[str, Any]:
        reached = np.isfinite(self.reached_s)
        return {
            "start_s": self.start_s,
            "end_s": self.last_s + period_s,
            "direction": "under" if self.side < 0 else "over",
            "extreme_hz": self.extreme_hz,
            "max_deviation_hz": self.max_deviation_hz,
            "response_time_s": self.reached_s - self.start_s if reached else None,
            "delivered_ratio": (
                self.delivered_ws / self.expected_ws if self.expected_ws > 0 else None
            ),
        }


@dataclass(frozen=True)
class CapInterval:
    start_s: float
    last_s: float
    cap_w: float
    known: int  # ticks with a grid reading
    within: int  # of them, at or under the cap
    max_excess_w: float  # largest grid − cap (≤ 0: always under)

    def merge(self, later: CapInterval) -> CapInterval:
        return replace(
            self,
            last_s=later.last_s,
            known=self.known + later.known,
            within=self.within + later.within,
            max_excess_w=max(self.max_excess_w, later.max_excess_w),
        )

    def result(self, period_s: float) -> dict[str, Any]:
        return {
            "start_s": self.start_s,
            "end_s": self.last_s + period_s,
            "cap_w": self.cap_w,
            "within_cap_ratio": self.within / self.known if self.known else None,
            "max_excess_w": max(self.max_excess_w, 0.0) if self.known else None,
        }


class EventFigures:
    """Streams rows; `result` lists the frequency events and the import cap intervals."""

    def __init__(self, period_s: float, droop: Droop | None, threshold_hz: float) -> None:
        self.period_s, self.droop, self.threshold_hz = period_s, droop, threshold_hz
        self.excursions: RunStream[Excursion] | None = None
        if droop is not None:
            self.excursions = RunStream(
                self._side,
                self._excursion,
                keep=lambda x: x.max_deviation_hz >= threshold_hz,
                wanted=self._reaches_threshold,
            )
        self.caps: RunStream[CapInterval] = RunStream(
            lambda rows: rows.get("import_cap_w"), self._cap
        )

    def add(self, rows: Rows) -> None:
        if self.excursions is not None:
            self.excursions.add(rows)
        self.caps.add(rows)

    def _deviation_hz(self, rows: Rows) -> np.ndarray:
        assert self.droop is not None
        return rows.get("frequency_hz") - self.droop.nominal_hz

    def _side(self, rows: Rows) -> np.ndarray:
        assert self.droop is not None
        deviation = self._deviation_hz(rows)
        outside = np.abs(deviation) > self.droop.deadband_hz  # False for NaN
        side = np.where(outside, np.sign(deviation), np.nan)
        # A reading missing for a moment keeps the side it had: one lost tick is no new event.
        return fill_forward(side, np.isnan(deviation), int(MAX_FILL_S / self.period_s))

    def _reaches_threshold(self, rows: Rows, starts: np.ndarray, _ends: np.ndarray) -> np.ndarray:
        # Rows between runs lie within the deadband, so each slice's largest is its run's.
        size = np.nan_to_num(np.abs(self._deviation_hz(rows)))
        return np.maximum.reduceat(size, starts) >= self.threshold_hz

    def _excursion(self, rows: Rows, s: int, e: int) -> Excursion:
        assert self.droop is not None
        t = rows.time_s[s:e]
        f = rows.get("frequency_hz")[s:e]
        side = float(np.sign(f[0] - self.droop.nominal_hz))
        expected = self.droop.expected_w(f)
        toward = -side * delivered_w(rows)[s:e]
        reached = np.flatnonzero(toward >= RESPONSE_REACHED_RATIO * expected)
        return Excursion(
            start_s=float(t[0]),
            last_s=float(t[-1]),
            side=side,
            max_deviation_hz=float(np.nanmax(np.abs(f - self.droop.nominal_hz))),
            extreme_hz=float(np.nanmin(f) if side < 0 else np.nanmax(f)),
            reached_s=float(t[reached[0]]) if len(reached) else np.nan,
            delivered_ws=float(np.nansum(toward)) * self.period_s,
            expected_ws=float(np.sum(expected)) * self.period_s,
        )

    def _cap(self, rows: Rows, s: int, e: int) -> CapInterval:
        cap = float(rows.get("import_cap_w")[s])
        grid = rows.get("grid_w")[s:e]
        grid = grid[np.isfinite(grid)]
        return CapInterval(
            start_s=float(rows.time_s[s]),
            last_s=float(rows.time_s[e - 1]),
            cap_w=cap,
            known=len(grid),
            within=int(np.sum(grid <= cap * (1 + FLOAT_TOLERANCE))),
            max_excess_w=float(np.max(grid - cap)) if len(grid) else -np.inf,
        )

    def result(self) -> dict[str, Any]:
        frequency = None
        if self.excursions is not None:
            frequency = [x.result(self.period_s) for x in self.excursions.finish()]
        return {
            "frequency": frequency,
            "import_caps": [c.result(self.period_s) for c in self.caps.finish()],
        }
