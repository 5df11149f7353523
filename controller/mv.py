"""Measurement and verification (M&V) of demand-response events, pure: what the site delivered
against a baseline of what it would have drawn, from its grid samples (W, positive = import).

Baselines: `before`, the mean grid draw over a window before the event's start (samples inside
other events left out); `similar_days`, a per-second profile over the event's clock interval
averaged across the most recent similar days (weekdays or weekend days, in the site's UTC
offset) that have enough data and ran no other event, so the daily shape is kept. The primary
one is `settings.primary` when it can be worked out, else the other.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

DAY_S = 86400.0
KINDS = ("import_cap", "shed")
BEFORE = "before"
SIMILAR_DAYS = "similar_days"
METHODS = (SIMILAR_DAYS, BEFORE)
Span = tuple[float, float]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class MvSettings:
    before_window_s: float = 900.0  # the `before` baseline's window
    similar_days: int = 10  # the similar days averaged, at most
    min_similar_days: int = 3  # fewer qualifying days: no `similar_days` baseline
    search_days: int = 30  # how far back similar days are looked for
    min_coverage: float = 0.9  # a day's share of the event's seconds with a sample
    utc_offset_s: float = 0.0  # the site's clock, for weekdays and calendar days
    response_share: float = 0.9  # the share of the asked reduction that counts as responded
    hold_tolerance_ratio: float = 0.01  # of the asked reduction
    hold_tolerance_min_w: float = 10_000.0  # the tolerance is never below this
    held_share: float = 0.99  # of the samples after the response within target: held
    max_gap_s: float = 5.0  # samples farther apart are not integrated across
    primary: Literal["similar_days", "before"] = SIMILAR_DAYS

    def __post_init__(self) -> None:
        n = self.similar_days
        rules: list[tuple[str, Callable[[Any], bool], str]] = [
            ("before_window_s", lambda v: 0 < v <= DAY_S, "in (0, 86400] s"),
            ("similar_days", lambda v: _is_int(v) and v >= 1, "an int >= 1"),
            (
                "min_similar_days",
                lambda v: _is_int(v) and 1 <= v <= n,
                "an int in [1, similar_days]",
            ),
            (
                "search_days",
                lambda v: _is_int(v) and n <= v <= 366,
                "an int in [similar_days, 366]",
            ),
            ("min_coverage", lambda v: 0 < v <= 1, "in (0, 1]"),
            ("utc_offset_s", lambda v: abs(v) <= 14 * 3600, "within ±14 h (±50400 s)"),
            ("response_share", lambda v: 0 < v <= 1, "in (0, 1]"),
            ("hold_tolerance_ratio", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("hold_tolerance_min_w", lambda v: 0 <= v < math.inf, ">= 0 and finite"),
            ("held_share", lambda v: 0 < v <= 1, "in (0, 1]"),
            ("max_gap_s", lambda v: 0 < v <= 3600, "in (0, 3600] s"),
            ("primary", lambda v: v in METHODS, f"one of {METHODS}"),
        ]
        for name, check, rule in rules:
            value = getattr(self, name)
            try:
                ok = bool(check(value))  # NaN fails every comparison, so it is refused too
            except TypeError:  # not a number at all
                ok = False
            if not ok:
                raise ValueError(f"mv settings: {name} must be {rule} (got {value!r})")


@dataclass(frozen=True, eq=False)
class Samples:
    """Grid samples sorted by time; a NaN grid value is a sample without a reading."""

    time_s: np.ndarray
    grid_w: np.ndarray

    def __post_init__(self) -> None:
        t = np.asarray(self.time_s, dtype=float).reshape(-1)
        g = np.asarray(self.grid_w, dtype=float).reshape(-1)
        if t.shape != g.shape:
            raise ValueError(f"samples: {t.size} times but {g.size} grid values")
        if t.size > 1 and not np.all(np.diff(t) >= 0):  # unsorted input is sorted, not refused
            order = np.argsort(t, kind="stable")
            t, g = t[order], g[order]
        object.__setattr__(self, "time_s", t)
        object.__setattr__(self, "grid_w", g)

    @classmethod
    def empty(cls) -> Samples:
        return cls(np.empty(0), np.empty(0))

    def between(self, lo_s: float, hi_s: float) -> Samples:
        """The samples with lo_s <= time < hi_s."""
        i, j = np.searchsorted(self.time_s, [lo_s, hi_s], side="left")
        return Samples(self.time_s[i:j], self.grid_w[i:j])


def _finite(x: float | None) -> float | None:
    """JSON-safe: a Python float, or None for None, NaN or infinity."""
    return float(x) if x is not None and math.isfinite(x) else None


@dataclass(frozen=True, eq=False)
class Baseline:
    method: str
    mean_w: float | None  # over the event so far; None: no baseline (see reason)
    curve_w: np.ndarray | None  # per event sample (similar_days); None: flat at mean_w
    days: int | None  # similar days used (found, when too few); None for `before`
    coverage: float  # share of the window's seconds with a sample (mean over the days)
    reason: str | None = None

    def at(self, n: int) -> np.ndarray:
        """The baseline at each of the event's n samples (NaN when there is none)."""
        if self.curve_w is not None:
            return self.curve_w
        return np.full(n, math.nan if self.mean_w is None else self.mean_w)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "mean_w": _finite(self.mean_w),
            "days": self.days,
            "coverage": _finite(self.coverage),
            "reason": self.reason,
        }


def _bins(t: np.ndarray, g: np.ndarray, lo_s: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-second sums and counts of the finite samples from lo_s, over n seconds."""
    keep = np.isfinite(g)
    idx = np.clip(np.floor(t[keep] - lo_s).astype(np.int64), 0, n - 1)
    return (
        np.bincount(idx, weights=g[keep], minlength=n),
        np.bincount(idx, minlength=n).astype(float),
    )


def _inside(t: np.ndarray, spans: Sequence[Span]) -> np.ndarray:
    out = np.zeros(t.shape, dtype=bool)
    for a, b in spans:
        out |= (t >= a) & (t < b)
    return out


def _overlaps(lo_s: float, hi_s: float, spans: Sequence[Span]) -> bool:
    return any(a < hi_s and b > lo_s for a, b in spans)


def _weekend(t_s: float, utc_offset_s: float) -> bool:
    weekday = (math.floor((t_s + utc_offset_s) / DAY_S) + 3) % 7  # 1970-01-01 was a Thursday
    return weekday >= 5


def _calendar_days(lo_s: float, hi_s: float, utc_offset_s: float) -> Span:
    """The local calendar days [midnight, midnight) that [lo_s, hi_s) touches."""
    first = math.floor((lo_s + utc_offset_s) / DAY_S) * DAY_S - utc_offset_s
    last = math.ceil((hi_s + utc_offset_s) / DAY_S) * DAY_S - utc_offset_s
    return first, max(last, first + DAY_S)


def before_baseline(
    before: Samples, start_s: float, s: MvSettings, other_events: Sequence[Span] = ()
) -> Baseline:
    """The mean grid draw over `before_window_s` up to the start, other events' samples left
    out (their draw is no baseline)."""
    lo = start_s - s.before_window_s
    w = before.between(lo, start_s)
    keep = np.isfinite(w.grid_w) & ~_inside(w.time_s, other_events)
    n = max(1, math.ceil(s.before_window_s))
    _, counts = _bins(w.time_s[keep], w.grid_w[keep], lo, n)
    coverage = float(np.count_nonzero(counts)) / n
    if not keep.any():
        reason = f"no samples in the {s.before_window_s:.0f} s before the start"
        return Baseline(BEFORE, None, None, None, coverage, reason)
    return Baseline(BEFORE, float(np.mean(w.grid_w[keep])), None, None, coverage)


def similar_days_baseline(
    history: Samples,
    start_s: float,
    end_s: float,
    event_time_s: np.ndarray,
    s: MvSettings,
    other_events: Sequence[Span] = (),
    now_s: float = math.inf,
) -> Baseline:
    """A per-second profile over [start, end) averaged across the most recent similar days
    with enough data and no event, looked up at each of the event's sample times."""
    n = max(1, math.ceil(end_s - start_s))
    weekend = _weekend(start_s, s.utc_offset_s)
    total, days_per_bin = np.zeros(n), np.zeros(n)
    coverages: list[float] = []
    with_event = too_sparse = 0
    for k in range(1, s.search_days + 1):
        if len(coverages) == s.similar_days:
            break
        lo = start_s - k * DAY_S
        hi = lo + (end_s - start_s)
        if _weekend(lo, s.utc_offset_s) != weekend:
            continue
        # An event that day (any part of it: a rebound after it counts too) or this very
        # event, on a window longer than a day, is no baseline.
        day_lo, day_hi = _calendar_days(lo, hi, s.utc_offset_s)
        if _overlaps(lo, hi, [(start_s, end_s)]) or _overlaps(day_lo, day_hi, other_events):
            with_event += 1
            continue
        w = history.between(lo, hi)
        sums, counts = _bins(w.time_s, w.grid_w, lo, n)
        coverage = float(np.count_nonzero(counts)) / n
        if coverage < s.min_coverage:
            too_sparse += 1
            continue
        has = counts > 0
        total[has] += sums[has] / counts[has]
        days_per_bin[has] += 1
        coverages.append(coverage)
    used = len(coverages)
    coverage = float(np.mean(coverages)) if coverages else 0.0
    if used < s.min_similar_days:
        reason = (
            f"{used} similar days with data in the last {s.search_days} (need "
            f"{s.min_similar_days}; {with_event} had an event, {too_sparse} too few samples)"
        )
        return Baseline(SIMILAR_DAYS, None, None, used, coverage, reason)
    has = days_per_bin > 0
    seconds = np.arange(n, dtype=float)
    # A second no day has: interpolated from its neighbours (coverage keeps them few).
    profile = np.interp(seconds, seconds[has], total[has] / days_per_bin[has])
    idx = np.clip(np.floor(np.asarray(event_time_s) - start_s).astype(np.int64), 0, n - 1)
    so_far = max(1, min(n, math.ceil(min(end_s, now_s) - start_s)))
    return Baseline(SIMILAR_DAYS, float(np.mean(profile[:so_far])), profile[idx], used, coverage)


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
            out[name] = [_finite(v) for v in mean]
        return out

    def to_json(self, series_step_s: float | None = None) -> dict[str, Any]:
        """JSON-safe (no numpy, no NaN); the samples only when series_step_s is given."""
        out: dict[str, Any] = {
            "event_id": int(self.event_id),
            "kind": self.kind,
            "target_w": _finite(self.target_w),
            "start_s": _finite(self.start_s),
            "end_s": _finite(self.end_s),
            "running": self.running,
            "baseline": self.baseline.to_json(),
            "baselines": {k: v.to_json() for k, v in self.baselines.items()},
            "asked_w": _finite(self.asked_w),
            "delivered_mean_w": _finite(self.delivered_mean_w),
            "delivered_share": _finite(self.delivered_share),
            "response_time_s": _finite(self.response_time_s),
            "held": self.held,
            "held_share": _finite(self.held_share),
            "worst_excess_w": _finite(self.worst_excess_w),
            "energy_not_drawn_j": _finite(self.energy_not_drawn_j),
            "tolerance_w": _finite(self.tolerance_w),
            "coverage": _finite(self.coverage),
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
