"""The workload's rhythm, learned from the load alone: training repeats a step (0.3–0.6 s) and,
every K steps, a pause (a checkpoint, every 10–20 s) at a lower draw. Pure: a state and new
samples in, a state out; no clock, no I/O; memory bounded by a ring of the last `window_s`.

Each update reads the whole ring again (a few hundred samples: well under a millisecond), so
the state is the ring plus what it shows:
- the slow part: a centred moving mean over `smooth_s` (about two steps);
- pauses: where the slow part sits below half-way between the compute and the pause level for
  at least `min_pause_s`, widened to the raw samples below that mark (the exact edges);
- the pause interval: the median of the last few intervals between pause starts, trusted
  (`confidence`) for as many of the latest intervals as agree with it within `tolerance`;
- the levels: medians of each compute stretch's and each pause's mean draw;
- the step period: the autocorrelation of the load less its slow part, refined over multiples.

`forecast` turns a confident rhythm into the planner's own `Event`s (a pause: its start, the
pause level less the compute level, its duration), so the same planner plans a learned pause
as an announced one. A pause that does not come by its time plus `late_s` is a miss: nothing
is forecast until the rhythm has shown `min_consistent` agreeing intervals again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import pairwise
from statistics import median

import numpy as np

from controller.dispatch.planner import Event


@dataclass(frozen=True)
class RhythmSettings:
    window_s: float = 60.0  # the ring: a few intervals of pauses every 10–20 s
    smooth_s: float = 1.0  # the slow part's moving mean: about two steps
    period_window_s: float = 20.0  # the step period from this much of the latest load
    min_period_s: float = 0.2
    max_period_s: float = 1.2
    max_period_lag_s: float = 5.0  # multiples of the period up to this refine it
    min_correlation: float = 0.3  # a weaker autocorrelation peak is no step period
    min_pause_s: float = 1.0  # a dip shorter than this is part of a step
    max_pause_s: float = 30.0  # a longer one is a stop, not a pause of the rhythm
    min_depth_ratio: float = 0.3  # a pause takes at least this share of the compute draw
    tolerance: float = 0.1  # intervals within this share of their median agree
    intervals_kept: int = 4  # the interval: the median of the last this many
    min_consistent: int = 2  # agreeing intervals before a rhythm is forecast
    horizon_s: float = 30.0  # pauses forecast this far ahead


@dataclass(frozen=True)
class Pause:
    start_s: float
    duration_s: float | None  # None while it lasts (at the ring's end)
    level_w: float  # its mean draw


@dataclass(frozen=True, eq=False)
class Rhythm:
    """The ring of recent load and what it shows (None: not seen)."""

    dt_s: float
    end_s: float  # the time just after the ring's last sample
    load_w: np.ndarray  # the ring, oldest first, read-only
    period_s: float | None = None
    pauses: tuple[Pause, ...] = ()
    interval_s: float | None = None
    duration_s: float | None = None
    compute_w: float | None = None
    pause_w: float | None = None
    confidence: int = 0  # the latest intervals that agree with the interval

    def __setstate__(self, state: dict[str, object]) -> None:
        # Read-only as made: a pickle's trip (to and from the planner's process) loses it.
        self.__dict__.update(state)
        self.load_w.flags.writeable = False


def start(dt_s: float, t0_s: float = 0.0) -> Rhythm:
    """Nothing learned yet; the first sample will be at t0_s."""
    empty = np.zeros(0)
    empty.flags.writeable = False
    return Rhythm(dt_s, t0_s, empty)


def learn(state: Rhythm, samples_w: np.ndarray, s: RhythmSettings = RhythmSettings()) -> Rhythm:
    """The state after the samples that follow its ring (one every dt_s)."""
    keep = max(1, round(s.window_s / state.dt_s))
    ring = np.concatenate((state.load_w, np.asarray(samples_w, dtype=float)))[-keep:]
    ring.flags.writeable = False
    end_s = state.end_s + len(samples_w) * state.dt_s
    t0_s = end_s - len(ring) * state.dt_s
    pauses = _pauses(ring, state.dt_s, t0_s, s)
    interval, agree = _interval(pauses, s)
    done = [p.duration_s for p in pauses if p.duration_s is not None]
    return replace(
        state,
        end_s=end_s,
        load_w=ring,
        period_s=_period(ring[-max(1, round(s.period_window_s / state.dt_s)) :], state.dt_s, s),
        pauses=pauses,
        interval_s=interval,
        duration_s=median(done) if done else None,
        compute_w=_compute_level(ring, state.dt_s, t0_s, pauses),
        pause_w=median([p.level_w for p in pauses]) if pauses else None,
        confidence=agree,
    )


def _mean(x: np.ndarray) -> float:
    return float(x.sum()) / len(x)


def _slow(load_w: np.ndarray, n: int) -> np.ndarray:
    """A centred moving mean over n samples (fewer at the ends)."""
    c = np.concatenate(((0.0,), np.cumsum(load_w)))
    i = np.arange(len(load_w))
    lo, hi = np.maximum(i - n // 2, 0), np.minimum(i + n - n // 2, len(load_w))
    return (c[hi] - c[lo]) / (hi - lo)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8), prepend=0, append=0))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _pauses(load_w: np.ndarray, dt_s: float, t0_s: float, s: RhythmSettings) -> tuple[Pause, ...]:
    if len(load_w) < 2:
        return ()
    slow = _slow(load_w, max(1, round(s.smooth_s / dt_s)))
    k = int(0.9 * (len(slow) - 1))  # the 90th percentile, near enough
    high, low = float(np.partition(slow, k)[k]), float(slow.min())
    if high <= 0.0 or high - low < s.min_depth_ratio * high:
        return ()  # no dip deep enough to be a pause
    mark = (high + low) / 2.0
    below = load_w < mark
    out = []
    for a, b in _runs(slow < mark):
        inside = np.flatnonzero(below[a:b])  # the exact edges: the raw draw below the mark
        if inside.size == 0:
            continue
        a, b = a + int(inside[0]), a + int(inside[-1]) + 1
        while a > 0 and below[a - 1]:
            a -= 1
        while b < len(load_w) and below[b]:
            b += 1
        lasts = (b - a) * dt_s
        if a == 0 or lasts < s.min_pause_s or lasts > s.max_pause_s:
            continue  # begun before the ring (its start unknown), a step's dip, or a stop
        ongoing = b == len(load_w)
        out.append(Pause(t0_s + a * dt_s, None if ongoing else lasts, _mean(load_w[a:b])))
    return tuple(out)


def _interval(pauses: tuple[Pause, ...], s: RhythmSettings) -> tuple[float | None, int]:
    """The median of the last few intervals between pause starts, and how many of the latest
    agree with it (a gap, a missed pause, ends the count)."""
    gaps = np.diff([p.start_s for p in pauses])
    if gaps.size == 0:
        return None, 0
    middle = median(gaps[-s.intervals_kept :].tolist())
    agree = 0
    for g in gaps[::-1]:
        if abs(g - middle) > s.tolerance * middle:
            break
        agree += 1
    return middle, agree


def _compute_level(
    load_w: np.ndarray, dt_s: float, t0_s: float, pauses: tuple[Pause, ...]
) -> float | None:
    """The median of the mean draw between consecutive pauses."""
    means = []
    for p, q in pairwise(pauses):
        if p.duration_s is not None:
            a, b = round((p.start_s + p.duration_s - t0_s) / dt_s), round((q.start_s - t0_s) / dt_s)
            if b > a:
                means.append(_mean(load_w[a:b]))
    return median(means) if means else None


def _peaks(acf: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """The peak next to each lag, to a fraction of a sample (a parabola through its
    neighbours)."""
    at = np.clip(lags, 1, len(acf) - 2)
    at = np.clip(at + np.argmax(np.stack([acf[at - 1], acf[at], acf[at + 1]]), axis=0) - 1,
                 1, len(acf) - 2)  # fmt: skip
    y0, y1, y2 = acf[at - 1], acf[at], acf[at + 1]
    bend = y0 - 2.0 * y1 + y2
    safe = np.where(bend < 0.0, bend, -1.0)
    return at + np.where(bend < 0.0, 0.5 * (y0 - y2) / safe, 0.0)


def _period(load_w: np.ndarray, dt_s: float, s: RhythmSettings) -> float | None:
    """The step period: the first strong peak of the autocorrelation of the load less its slow
    part, then the peaks at its multiples (each a finer reading of it)."""
    lo, hi = max(2, math.floor(s.min_period_s / dt_s)), math.ceil(s.max_period_s / dt_s)
    top = max(hi + 2, round(s.max_period_lag_s / dt_s))
    if len(load_w) < 2 * top:
        return None
    x = load_w - _slow(load_w, max(1, round(s.smooth_s / dt_s)))
    energy = float(np.dot(x, x))
    if energy <= 0.0:
        return None
    n = len(x)
    full = np.correlate(x, x, mode="full")[n - 1 : n + top + 1]
    acf = full / (n - np.arange(top + 2)) * n / energy
    k = np.arange(lo, hi + 1)
    best = acf[k].max()
    if best < s.min_correlation:
        return None
    # The first peak half as strong as the best, not a multiple of the period: sampled at a
    # tick that does not divide it, a step repeats exactly only every few periods.
    peaks = k[(acf[k] >= acf[k - 1]) & (acf[k] >= acf[k + 1]) & (acf[k] >= 0.5 * best)]
    first = int(peaks[0]) if peaks.size else int(k[np.argmax(acf[k])])
    p = float(_peaks(acf, np.array([first]))[0])
    m = np.arange(1, int((top - 1) // p) + 1)
    lags = _peaks(acf, np.round(m * p).astype(int))
    return float(np.dot(m, lags) / np.dot(m, m)) * dt_s  # least squares through the origin


def late_s(state: Rhythm, s: RhythmSettings = RhythmSettings()) -> float:
    """How long after its time a pause may still be seen: its detection takes min_pause_s and
    half the moving mean, and the interval wanders by its tolerance."""
    return s.tolerance * (state.interval_s or 0.0) + s.min_pause_s + s.smooth_s


def confident(state: Rhythm, now_s: float, s: RhythmSettings = RhythmSettings()) -> bool:
    """A rhythm seen often enough, whose next pause is not overdue (one miss ends it)."""
    if state.confidence < s.min_consistent or state.interval_s is None or not state.pauses:
        return False
    if None in (state.duration_s, state.compute_w, state.pause_w):
        return False
    return now_s <= state.pauses[-1].start_s + state.interval_s + late_s(state, s)


def forecast(
    state: Rhythm, now_s: float, s: RhythmSettings = RhythmSettings()
) -> tuple[Event, ...]:
    """The pauses the rhythm predicts from its latest until now_s + horizon_s (the next one may
    be due already, not yet seen), as the planner's events; none while not confident."""
    if not confident(state, now_s, s):
        return ()
    assert state.interval_s and state.duration_s and state.compute_w and state.pause_w
    depth = state.pause_w - state.compute_w
    if depth >= 0.0:
        return ()
    last = state.pauses[-1].start_s
    count = math.floor((now_s + s.horizon_s - last) / state.interval_s)
    return tuple(
        Event(last + k * state.interval_s, depth, state.duration_s, state.interval_s)
        for k in range(1, count + 1)
    )


def hold(
    held: tuple[Event, ...],
    predicted: tuple[Event, ...],
    now_s: float,
    lead_s: float,
    keep_s: float,
    near_s: float,
) -> tuple[Event, ...]:
    """The predicted pauses the planner follows: each taken as it comes within lead_s and then
    kept as it was (the planner tracks an event by its value: a forecast that moves by a
    sample each second would restart its plan), until keep_s after it ends. A prediction
    within near_s of a held one is that one."""
    kept = [e for e in held if e.at_s + e.duration_s + keep_s >= now_s]
    for e in predicted:
        if e.at_s <= now_s + lead_s and all(abs(e.at_s - k.at_s) >= near_s for k in kept):
            kept.append(e)
    return tuple(kept)
