"""The baselines of M&V (measurement and verification of demand-response events), pure:
what the site would have drawn without the event, from its grid samples (W, positive =
import). `before`: the mean grid draw over a window before the event's start (samples inside
other events left out); `similar_days`: a per-second profile over the event's clock interval
averaged across the most recent similar days (weekdays or weekend days, in the site's UTC
offset) that have enough data and ran no other event, so the daily shape is kept. Also the
settings and the samples both this module and `controller/mv.py` work on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


def json_float(x: float | None) -> float | None:
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
            "mean_w": json_float(self.mean_w),
            "days": self.days,
            "coverage": json_float(self.coverage),
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
