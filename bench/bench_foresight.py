"""What is foresight worth, and how fine must it be? A planner that knows the load ahead: once
a second, a linear program over the next --horizon-s chooses the grid (at the ramp limit at
most) that keeps the stored energy closest to where it started, moving little through the
battery; the core tracks it (the feed-forward is that grid less the core's low-pass foreseen
on the same load), and every limit of the core holds as ever. It is told the trace's exact
load, or only its mean over 0.5, 1 and 2 s (centred), or only when and how much: the mean
between the events file's times (the job's start, each checkpoint's start and end), the
most a notice could say, never the training steps' own swings (0.48 s); and the same of
every change, with the two the events file does not mark (the GPUs' first draw, 3 s after
train_ready, and training's end). Beside it, the controller's own planner with the events
file's notices. Whole shipped training trace, 10,000 GPUs + 2 MW, 0.5 MW/s, with the
replay's figures and the perfect-foresight bound.

Then the same on the trace's training cycles tiled to --tile-s (bench_rhythm's tiling, with
its jitter; figures from 100 s, as there), beside the controller with the learned rhythm: the
steady state the issue's "≤ 1.15 of the bound" is about. The bound's least stored energy is a
linear program's, which may charge and discharge at once (bound.py); the followable bound is
the least a schedule a battery can follow was found to need, so both ratios are printed.

    python bench/bench_foresight.py [--horizon-s 15] [--tile-s 600]

The foresight planner keeps the stored energy itself, so its runs have the energy return
off (it would pull against the program); the controller's keeps the default 20 s.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from controller.dispatch import core, rhythm
from controller.replay.events import read_events
from controller.replay.figures import J_PER_KWH
from controller.replay.run import PLAN_EVERY_S, ReplaySettings, report, simulate, window
from controller.replay.trace import read_trace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rhythm import CHECKPOINT_S, tiled  # the ten-minute tiling, as bench_rhythm's

TRACE = Path(__file__).resolve().parents[1] / "drivers" / "sim" / "traces" / "h200_train_1p7b.csv"
EVENTS = TRACE.with_suffix(".events.csv")
TILED_FROM_S = 100.0  # bench_rhythm's --figures-from-s
PLAN_DT_S = 0.2  # the program's step: two of the trace's
MOVED_PRICE = 0.01  # kWh of distance from the start's energy per kWh through the battery


def grid_plan(
    grid_w: float, energy_j: float, target_j: float, load_w: np.ndarray, ramp: float
) -> np.ndarray:
    """The grid per PLAN_DT_S step from now (W) that keeps the stored energy within the least
    distance of target_j (the losses aside), ramp-limited from grid_w, on the load foreseen."""
    n, dt = len(load_w), PLAN_DT_S
    # Columns: grid g (n), |battery| u (n), the largest distance t. E_k = E + dt·Σ_{i≤k}(g − L).
    cum = sparse.csr_matrix(np.tril(np.ones((n, n))) * dt)
    eye, zero = sparse.identity(n), sparse.csr_matrix((n, n))
    ones, none = sparse.csr_matrix(np.ones((n, 1))), sparse.csr_matrix((n, 1))
    diff = sparse.identity(n) - sparse.eye(n, k=-1)
    first = np.zeros(n)
    first[0] = grid_w
    offset = target_j - energy_j + cum @ load_w
    a_ub = sparse.vstack(
        [
            sparse.hstack([cum, zero, -ones]),  # E_k − target ≤ t
            sparse.hstack([-cum, zero, -ones]),  # target − E_k ≤ t
            sparse.hstack([eye, -eye, none]),  # g − L ≤ u
            sparse.hstack([-eye, -eye, none]),  # L − g ≤ u
            sparse.hstack([diff, zero, none]),  # the ramp, up
            sparse.hstack([-diff, zero, none]),  # and down
        ]
    ).tocsr()
    b_ub = np.concatenate([offset, -offset, load_w, -load_w, ramp * dt + first, ramp * dt - first])
    c = np.r_[np.zeros(n), np.full(n, MOVED_PRICE * dt), 1.0] / J_PER_KWH
    bounds = [(None, None)] * n + [(0.0, None)] * (n + 1)
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    return res.x[:n] if res.status == 0 else np.full(n, grid_w)


class Foresight:
    """The replay's planner that knows `known_w` (one per trace step) `horizon_s` ahead."""

    def __init__(self, known_w: np.ndarray, s: ReplaySettings, dt_s: float, horizon_s: float):
        if s.dispatch.average_window_s:  # the core's moving average is not foreseen here
            raise ValueError("the foresight planner foresees a plain low-pass: no average_window_s")
        if horizon_s < 2 * PLAN_DT_S:
            raise ValueError(f"a horizon of {horizon_s} s is under two of the program's steps")
        self.known, self.s, self.dt = known_w, s, dt_s
        # At least to the next re-plan, whatever the horizon.
        self.steps = max(round(horizon_s / dt_s), round(PLAN_EVERY_S / dt_s))
        self.target_j = s.initial_soc * s.capacity_j
        self.times: list[float] = []

    def feed_forward(self, step: int, core_state: np.ndarray, load_w: np.ndarray) -> np.ndarray:
        ahead = self.known[step : step + self.steps]
        per = round(PLAN_DT_S / self.dt)
        n = len(ahead) // per
        if not core_state[core.S_INIT] or n < 2:
            return np.zeros(self.steps)
        t0 = time.perf_counter()
        coarse = ahead[: n * per].reshape(n, per).mean(axis=1)
        g = grid_plan(
            core_state[core.S_GRID],
            core_state[core.S_ENERGY],
            self.target_j,
            coarse,
            self.s.ramp_w_per_s,
        )
        self.times.append(time.perf_counter() - t0)
        # Each program step's grid is its level: the trace's steps go on a straight line
        # through the levels at each program step's middle (held flat, each jump would be
        # clipped by the core's ramp limiter, which allows a trace step's share of it).
        middles = per * np.arange(n) + (per - 1) / 2.0
        g = np.interp(np.arange(n * per), np.r_[-1, middles], np.r_[core_state[core.S_GRID], g])
        # The core's low-pass on the same foreseen load: what its target holds already.
        alpha = self.dt / (self.s.dispatch.lowpass_tau_s + self.dt)
        lowpass, x = np.empty(len(g)), float(core_state[core.S_LOWPASS])
        for i, w in enumerate(ahead[: len(g)]):
            x += alpha * (w - x)
            lowpass[i] = x
        return np.r_[g - lowpass, np.zeros(self.steps - len(g))]


def centred_mean(x: np.ndarray, samples: int) -> np.ndarray:
    """Each sample's mean over `samples` around it (the ends held)."""
    half = samples // 2
    padded = np.r_[np.full(half, x[0]), x, np.full(samples - half - 1, x[-1])]
    return np.convolve(padded, np.ones(samples) / samples, mode="valid")


def segment_means(load_w: np.ndarray, t_s: np.ndarray, edges_s: list[float]) -> np.ndarray:
    """The load held at its own mean between consecutive edges (s): what a notice of when and
    how much could say at best."""
    out = np.empty_like(load_w)
    cut = np.searchsorted(t_s, sorted(edges_s))
    for a, b in zip(np.r_[0, cut], np.r_[cut, len(load_w)], strict=True):
        if b > a:
            out[a:b] = load_w[a:b].mean()
    return out


def unmarked_changes(load_w: np.ndarray, t_s: np.ndarray) -> list[float]:
    """The load's two changes the events file does not mark (s): the GPUs' first draw (the
    first sample over half-way from the load's level at train_ready to its median in training,
    within the 1 s that the load's mean first crosses there: start-up's brief bursts before
    it stay under) and training's end (the last step's end)."""
    with EVENTS.open() as f:
        rows = list(csv.DictReader(f))
    ready = next(float(r["t_start_s"]) for r in rows if r["kind"] == "train_ready")
    end = max(float(r["t_end_s"]) for r in rows if r["kind"] == "train_step")
    slow = centred_mean(load_w, 10)
    training = (t_s >= ready) & (t_s < end)
    idle = slow[np.searchsorted(t_s, ready)]
    half = (idle + float(np.median(slow[training]))) / 2.0
    crossed = int(np.flatnonzero(training & (slow > half))[0])
    mean_from = max(0, crossed - 5)  # the first sample of centred_mean's 10 there
    first = mean_from + int(np.argmax(load_w[mean_from : crossed + 1] > half))
    return [float(t_s[first]), end]


def line(name: str, r: dict[str, Any]) -> str:
    return (
        f"  {name:36s} {r['band_attenuation_db']:6.2f} dB, ramp "
        f"{r['grid_max_ramp_w_per_s']:,.0f} W/s, throughput / bound {r['throughput_ratio']:.3f}, "
        f"stored {r['required_capacity_kwh']:.2f} kWh: / bound {r['capacity_ratio']:.3f} "
        f"(/ followable {r['realizable_capacity_ratio']:.3f}; the bound "
        f"{r['lp_required_capacity_kwh']:.2f}, followable {r['lp_realizable_capacity_kwh']:.2f})"
    )


def foresight_line(
    name: str, known_w: np.ndarray, load_w: np.ndarray, dt: float, horizon_s: float, first: int
) -> Foresight:
    """One foresight run (the energy return off) and its figures from step `first` on."""
    off = ReplaySettings(energy_return_s=0.0)
    planner = Foresight(known_w, off, dt, horizon_s)
    r = report(window(simulate(load_w, dt, off, planner=planner), first, dt), dt, off, True)
    print(line(f"{horizon_s:g} s ahead, {name}", r))
    return planner


def whole_trace(horizon_s: float) -> None:
    s = ReplaySettings()
    tr = read_trace(TRACE)
    load, dt = tr.site_load_w(s.gpus, s.base_w), tr.dt_s
    print(f"{TRACE.name}, 10,000 GPUs + 2 MW, 0.5 MW/s, {len(load)} steps of {dt:g} s")
    told = read_events(EVENTS, 30.0, 5.0, s.gpus * s.job_w_per_gpu)
    run = simulate(load, dt, s, notices=told, start_s=float(tr.t_s[0]))
    print(line("the planner, --events", report(run, dt, s, True)))
    edges = [a.notice.at_s for a in read_events(EVENTS, 0, 0, 0)]
    unmarked = unmarked_changes(load, tr.t_s)
    for name, known in (
        ("knows the load", load),
        ("knows its 0.5 s mean", centred_mean(load, 5)),
        ("knows its 1 s mean", centred_mean(load, 10)),
        ("knows its 2 s mean", centred_mean(load, 20)),
        ("knows when and how much", segment_means(load, tr.t_s, edges)),
        ("... of every change", segment_means(load, tr.t_s, edges + unmarked)),
    ):
        planner = foresight_line(name, known, load, dt, horizon_s, 0)
    print(f"  every change: the events file's and {', '.join(f'{t:.2f}' for t in unmarked)} s")
    print(f"  the program: {np.median(planner.times) * 1e3:.1f} ms a plan (p50)")


def tiled_trace(horizon_s: float, tile_s: float) -> None:
    s = ReplaySettings()
    gpu_w, dt, checkpoints = tiled(tile_s)
    load = s.base_w + s.gpus * gpu_w
    first = round(TILED_FROM_S / dt)
    print(
        f"tiled to {tile_s:g} s (bench_rhythm's), figures from {TILED_FROM_S:g} s; each run's "
        "bound starts where it stood then"
    )
    run = simulate(load, dt, s, learn=rhythm.RhythmSettings())
    r = report(window(run, first, dt), dt, s, True)
    print(line("the controller, --learn-rhythm", r))
    edges = checkpoints + [at + CHECKPOINT_S for at in checkpoints]
    t_s = np.arange(len(load)) * dt
    for name, known in (
        ("knows the load", load),
        ("knows its 1 s mean", centred_mean(load, 10)),
        ("knows when and how much", segment_means(load, t_s, edges)),
    ):
        foresight_line(name, known, load, dt, horizon_s, first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon-s", type=float, default=15.0)
    parser.add_argument("--tile-s", type=float, default=600.0)
    args = parser.parse_args()
    whole_trace(args.horizon_s)
    tiled_trace(args.horizon_s, args.tile_s)


if __name__ == "__main__":
    main()
