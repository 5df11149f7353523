"""Measurement and verification (M&V) of demand-response events, pure: what the site delivered
against a baseline of what it would have drawn, from its grid samples (W, positive = import).

Baselines (`controller/mv_baseline.py`): `before`, the mean grid draw over a window before
the event's start; `similar_days`, a per-second profile over the event's clock interval on the
most recent similar days. The primary one is `settings.primary` when it can be worked out,
else the other.

Against the baseline b(t), for grid samples g(t):
- asked: a shed's value; an import cap's max(0, b - cap), per sample.
- target grid: b - asked (a shed), the cap (an import cap).
- delivered: b - g, per sample; its mean is time-weighted (energy / seconds integrated).
- response time: from the start until g first reaches target + (1 - response_share) * asked,
  interpolated between the two samples around the crossing.
- held: from the response on, the share of samples with g <= target + tolerance, where the
  tolerance is max(hold_tolerance_ratio * asked, hold_tolerance_min_w); held when the share is
  at least `held_share`. Never reached: not held. The worst excess is the most the grid was
  above target from the response on (over the whole event when never reached), 0 at best.
- energy not drawn: the trapezoid integral of delivered over the event, never across a gap of
  more than `max_gap_s` (the edges to the start and the end held at the nearest sample); what was
  integrated over the event's elapsed time is the coverage.
A running event (now before its end) is measured up to now. Bad data never raise: NaN samples
are skipped and counted, and no samples or no baseline give a Performance with None figures and
a reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.mv_baseline import (
    BEFORE,
    DAY_S,
    KINDS,
    METHODS,
    SIMILAR_DAYS,
    Baseline,
    MvSettings,
    Samples,
    Span,
    before_baseline,
    json_float,
    similar_days_baseline,
)

__all__ = [
    "BEFORE",
    "DAY_S",
    "KINDS",
    "METHODS",
    "SIMILAR_DAYS",
    "Baseline",
    "MvSettings",
    "Performance",
    "Samples",
    "Span",
    "performance",
]


@dataclass(frozen=True, eq=False)
class Performance:
    event_id: int
    kind: str
    target_w: float  # the event's value: the cap, or the load to shed
    start_s: float
    end_s: float
    running: bool  # the figures are so far
    baseline: Baseline  # the primary one
    baselines: dict[str, Baseline]
    asked_w: float | None  # mean asked reduction
    delivered_mean_w: float | None
    delivered_share: float | None  # delivered / asked
    response_time_s: float | None  # None: the target was never reached
    held: bool | None  # None: no figures
    held_share: float | None  # None: never reached
    worst_excess_w: float | None  # the most the grid was above target (tolerance not added)
    energy_not_drawn_j: float | None
    coverage: float  # share of the elapsed event integrated
    samples: int  # with a reading
    nan_samples: int
    reason: str | None = None  # why figures are None
    tolerance_w: float | None = None  # the hold's
    # The event's samples, for series(): time, grid, baseline.
    trace: tuple[np.ndarray, np.ndarray, np.ndarray] = field(
        default=(np.empty(0), np.empty(0), np.empty(0)), repr=False
    )

    def series(self, step_s: float = 1.0) -> dict[str, list[float | None]]:
        """The event's samples, averaged over steps of step_s from the start: for a chart."""
        if not step_s > 0:
            raise ValueError(f"series: step_s must be > 0 (got {step_s!r})")
        t, g, b = self.trace
        out: dict[str, list[float | None]] = {
            "time_s": [],
            "grid_w": [],
            "baseline_w": [],
            "delivered_w": [],
        }
        if t.size == 0:
            return out
        steps, idx = np.unique(np.floor((t - self.start_s) / step_s), return_inverse=True)
        out["time_s"] = [float(self.start_s + k * step_s) for k in steps]
        for name, y in (("grid_w", g), ("baseline_w", b), ("delivered_w", b - g)):
            ok = np.isfinite(y)
            sums = np.bincount(idx[ok], weights=y[ok], minlength=steps.size)
            counts = np.bincount(idx[ok], minlength=steps.size)
            mean = np.divide(sums, counts, out=np.full(steps.size, np.nan), where=counts > 0)
            out[name] = [json_float(v) for v in mean]
        return out

    def to_json(self, series_step_s: float | None = None) -> dict[str, Any]:
        """JSON-safe (no numpy, no NaN); the samples only when series_step_s is given."""
        out: dict[str, Any] = {
            "event_id": int(self.event_id),
            "kind": self.kind,
            "target_w": json_float(self.target_w),
            "start_s": json_float(self.start_s),
            "end_s": json_float(self.end_s),
            "running": self.running,
            "baseline": self.baseline.to_json(),
            "baselines": {k: v.to_json() for k, v in self.baselines.items()},
            "asked_w": json_float(self.asked_w),
            "delivered_mean_w": json_float(self.delivered_mean_w),
            "delivered_share": json_float(self.delivered_share),
            "response_time_s": json_float(self.response_time_s),
            "held": self.held,
            "held_share": json_float(self.held_share),
            "worst_excess_w": json_float(self.worst_excess_w),
            "energy_not_drawn_j": json_float(self.energy_not_drawn_j),
            "tolerance_w": json_float(self.tolerance_w),
            "coverage": json_float(self.coverage),
            "samples": int(self.samples),
            "nan_samples": int(self.nan_samples),
            "reason": self.reason,
        }
        if series_step_s is not None:
            out["series"] = self.series(series_step_s)
        return out


def integrate(
    t: np.ndarray, y: np.ndarray, start_s: float, stop_s: float, max_gap_s: float
) -> tuple[float, float]:
    """∫ y dt over [start, stop) by trapezoids between samples at most max_gap_s apart, the
    edges held at the first and last sample when within max_gap_s; and the seconds covered."""
    if t.size == 0:
        return 0.0, 0.0
    dt = np.diff(t)
    near = dt <= max_gap_s
    area = float(np.sum((y[1:] + y[:-1])[near] * dt[near]) / 2)
    covered = float(np.sum(dt[near]))
    for edge, value in ((t[0] - start_s, y[0]), (stop_s - t[-1], y[-1])):
        if 0 < edge <= max_gap_s:
            area += float(value * edge)
            covered += float(edge)
    return area, covered


def _response(
    t: np.ndarray, margin: np.ndarray, start_s: float, max_gap_s: float
) -> tuple[int, float] | None:
    """The first sample with margin <= 0 and when the margin crossed zero (interpolated from
    the sample before, when it is near), from the start."""
    reached = np.flatnonzero(margin <= 0)
    if reached.size == 0:
        return None
    i = int(reached[0])
    at = float(t[i])
    if i > 0 and t[i] - t[i - 1] <= max_gap_s:
        before, after = float(margin[i - 1]), float(margin[i])
        at = float(t[i - 1]) + before / (before - after) * float(t[i] - t[i - 1])
    return i, max(0.0, at - start_s)


def performance(
    event_kind: str,
    value_w: float,
    start_s: float,
    end_s: float,
    event_id: int,
    during: Samples,
    before: Samples,
    history: Samples,
    now_s: float,
    s: MvSettings,
    other_events: Sequence[Span] = (),
) -> Performance:
    """What an event delivered, from the grid samples during it, before it (for the `before`
    baseline) and on the previous days (for `similar_days`); `other_events` are the spans of
    the site's other DR events, whose samples and days no baseline uses. Samples outside each
    window are ignored, so one Samples holding everything may be passed three times."""
    if event_kind not in KINDS:
        raise ValueError(f"mv: event kind must be one of {KINDS} (got {event_kind!r})")
    if not (math.isfinite(value_w) and math.isfinite(start_s) and end_s > start_s):
        raise ValueError(f"mv: bad event: value {value_w!r} W, [{start_s!r}, {end_s!r})")
    others = [(a, b) for a, b in other_events if (a, b) != (start_s, end_s)]
    stop = min(end_s, now_s)
    running = start_s <= now_s < end_s
    ev = during.between(start_s, stop) if stop > start_s else Samples.empty()
    ok = np.isfinite(ev.grid_w)
    nan_samples = int(ev.grid_w.size - np.count_nonzero(ok))
    baselines = {
        SIMILAR_DAYS: similar_days_baseline(
            history, start_s, end_s, ev.time_s, s, others, now_s=now_s
        ),
        BEFORE: before_baseline(before, start_s, s, others),
    }
    fallback = BEFORE if s.primary == SIMILAR_DAYS else SIMILAR_DAYS
    primary = baselines[s.primary]
    if primary.mean_w is None:
        primary = baselines[fallback]
    b_all = primary.at(ev.time_s.size)
    trace = (ev.time_s, ev.grid_w, b_all)

    def none(reason: str) -> Performance:
        return Performance(
            event_id, event_kind, value_w, start_s, end_s, running, primary, baselines,
            asked_w=None, delivered_mean_w=None, delivered_share=None, response_time_s=None,
            held=None, held_share=None, worst_excess_w=None, energy_not_drawn_j=None,
            coverage=0.0, samples=0, nan_samples=nan_samples, reason=reason, trace=trace,
        )  # fmt: skip

    if now_s < start_s:
        return none("not started")
    if not ok.any():
        return none(f"no grid samples during the event ({nan_samples} without a reading)")
    if primary.mean_w is None:
        return none(f"no baseline: {baselines[s.primary].reason}; {primary.reason}")

    t, g, b = ev.time_s[ok], ev.grid_w[ok], b_all[ok]
    if event_kind == "shed":
        asked = np.full(t.shape, value_w)
        target = b - asked
    else:
        asked = np.maximum(0.0, b - value_w)
        target = np.full(t.shape, value_w)
    delivered = b - g
    energy, covered = integrate(t, delivered, start_s, stop, s.max_gap_s)
    asked_j, _ = integrate(t, asked, start_s, stop, s.max_gap_s)
    # Time-weighted means when anything was integrated; the samples' means otherwise.
    asked_w = asked_j / covered if covered > 0 else float(np.mean(asked))
    delivered_w = energy / covered if covered > 0 else float(np.mean(delivered))
    tolerance = max(s.hold_tolerance_ratio * asked_w, s.hold_tolerance_min_w)
    limit = target + (1 - s.response_share) * asked
    response = _response(t, g - limit, start_s, s.max_gap_s)
    first = response[0] if response else 0  # never reached: the excess over the whole event
    excess = g[first:] - target[first:]
    held_share = float(np.mean(excess <= tolerance)) if response else None
    return Performance(
        event_id, event_kind, value_w, start_s, end_s, running, primary, baselines,
        asked_w=asked_w,
        delivered_mean_w=delivered_w,
        delivered_share=delivered_w / asked_w if asked_w > 0 else None,
        response_time_s=response[1] if response else None,
        held=held_share is not None and held_share >= s.held_share,
        held_share=held_share,
        worst_excess_w=max(0.0, float(np.max(excess))),
        energy_not_drawn_j=energy,
        coverage=min(1.0, covered / (stop - start_s)),
        samples=int(t.size),
        nan_samples=nan_samples,
        tolerance_w=tolerance,
        trace=trace,
    )  # fmt: skip
