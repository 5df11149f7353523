"""The rhythm learner: its time per update (the ring full, at the replay's 10 Hz and at a 20 ms
loop), what it learns on the shared training trace, and the replay's figures on that trace's
training cycles tiled to length with a jitter in step time: plain, with the learned rhythm,
with notices of each checkpoint (from an events file written for the tiling, read as replay
`--events` reads one, at its default lead), and with both.

    python bench/bench_rhythm.py [--tile-s 600] [--figures-from-s 100] [--no-bound]

The figures count from --figures-from-s (the controller and the learner warm, the bound
starting where the run stood), so they show the learned rhythm, not the run's start.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from controller.dispatch import rhythm
from controller.replay.events import read_events
from controller.replay.run import ReplaySettings, report, simulate, window
from controller.replay.trace import read_trace

TRACE = Path(__file__).resolve().parents[1] / "drivers" / "sim" / "traces" / "h200_train_1p7b.csv"
CYCLES_S = (23.6, 64.3)  # from the first checkpoint's start to the fifth's: four whole cycles
CHECKPOINT_S = 3.0  # each checkpoint of the trace (its events file: 23.602 to 26.602 s, ...)
PAUSE_LEAD_S = 5.0  # replay's default --pause-lead-s


def time_update(load_w: np.ndarray, dt_s: float, calls: int = 300) -> float:
    """The median time of one update with a full ring, one second of new samples each."""
    step = round(1.0 / dt_s)
    state = rhythm.learn(rhythm.start(dt_s), load_w[: round(60.0 / dt_s)])
    times = []
    for i in range(calls):
        new = np.roll(load_w, -i * step)[:step]
        t0 = time.perf_counter()
        state = rhythm.learn(state, new)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def tiled(seconds: float, seed: int = 5) -> tuple[np.ndarray, float, list[float]]:
    """The trace's per-GPU training cycles repeated to `seconds`, a short compute stretch first
    (the run starts training, not in a pause); each cycle gains or loses up to two samples
    of compute (±0.2 s: step time jitters, so the interval does). Also the checkpoints'
    starts in it (s), from the trace's events file."""
    tr = read_trace(TRACE)
    t, p = tr.t_s, tr.gpu_power_w
    a, b = np.searchsorted(t, CYCLES_S)
    cycle, rng = p[a:b], np.random.default_rng(seed)
    parts = [p[a - round(5.0 / tr.dt_s) : a]]
    offsets = [at - t[a] for at in checkpoint_starts() if CYCLES_S[0] <= at < CYCLES_S[1]]
    starts = []
    while (done := sum(len(x) for x in parts)) * tr.dt_s < seconds:
        starts += [round(float(done * tr.dt_s + at), 3) for at in offsets]
        k = int(rng.integers(-2, 3))  # the compute just before the next pause
        parts.append(np.r_[cycle[:-2], cycle[-2:][: 2 + k]] if k <= 0 else np.r_[cycle, cycle[-k:]])
    return np.concatenate(parts)[: round(seconds / tr.dt_s)], tr.dt_s, starts


def checkpoint_starts() -> list[float]:
    """The trace's checkpoint starts (s), from its events file (read as replay reads it)."""
    told = read_events(TRACE.with_suffix(".events.csv"), 0.0, 0.0, 0.0)
    return [a.notice.at_s for a in told if a.notice.kind == "pause_start"]


def events_csv(checkpoints_s: list[float], folder: Path) -> Path:
    """The tiling's checkpoints as an events file in the traces' format."""
    path = folder / "tiled.events.csv"
    rows = ["kind,t_start_s,t_compute_end_s,t_end_s,batch,tokens"]
    for at in checkpoints_s:
        rows += [f"checkpoint_start,{at:.3f},,,,", f"checkpoint_end,{at + CHECKPOINT_S:.3f},,,,"]
    path.write_text("\n".join(rows) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile-s", type=float, default=600.0)
    parser.add_argument("--figures-from-s", type=float, default=100.0)
    parser.add_argument("--no-bound", action="store_true", help="skip the perfect-foresight LPs")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    tr = read_trace(TRACE)
    load = tr.site_load_w(10_000, 2e6)
    fine = np.repeat(load, 5)  # the same load at a 20 ms loop: a five times longer ring
    print(f"learn(), ring full, per update at 10 Hz: {time_update(load, 0.1) * 1e3:.3f} ms")
    print(f"learn(), ring full, per update at 50 Hz: {time_update(fine, 0.02) * 1e3:.3f} ms")
    state = rhythm.start(tr.dt_s)
    for i in range(0, len(load), 10):
        state = rhythm.learn(state, load[i : i + 10])
    print(
        f"learned on {TRACE.name}: step {state.period_s:.4f} s, pause every "
        f"{state.interval_s:.3f} s for {state.duration_s:.2f} s, compute "
        f"{state.compute_w / 1e6:.2f} MW, pause {state.pause_w / 1e6:.2f} MW, "
        f"{state.confidence} agreeing intervals"
    )
    gpu_w, dt, checkpoints = tiled(args.tile_s)
    site = 2e6 + 10_000 * gpu_w
    s = ReplaySettings()
    with tempfile.TemporaryDirectory() as folder:
        job_w = s.gpus * s.job_w_per_gpu
        notices = read_events(events_csv(checkpoints, Path(folder)), 30.0, PAUSE_LEAD_S, job_w)
    state, sure = rhythm.start(dt), []
    for i in range(0, len(site), round(1.0 / dt)):
        state = rhythm.learn(state, site[i : i + round(1.0 / dt)])
        sure.append(rhythm.confident(state, state.end_s))
    late = sure[round(args.figures_from_s) :]
    print(
        f"tiled: confident at {sure.index(True) if True in sure else None} s, and "
        f"{100 * sum(late) / max(1, len(late)):.0f} % of the re-plans after "
        f"{args.figures_from_s:g} s; the interval {state.interval_s:.2f} s at the end"
    )
    first = min(round(args.figures_from_s / dt), len(site) - 2)
    print(
        f"tiled to {args.tile_s:g} s ({len(site):,} steps), 10,000 GPUs + 2 MW, 0.5 MW/s; "
        f"figures from {first * dt:g} s:"
    )
    keys = ("band_attenuation_db", "battery_throughput_kwh", "required_capacity_kwh")
    learned = rhythm.RhythmSettings()
    for name, told, learn in (
        ("plain", (), None),
        ("--learn-rhythm", (), learned),
        ("--events", notices, None),
        ("both", notices, learned),
    ):
        run = simulate(site, dt, s, notices=told, learn=learn)
        r = report(window(run, first, dt), dt, s, not args.no_bound)
        ratios = f"throughput / bound {r['throughput_ratio'] or float('nan'):.3f}, "
        ratios += f"capacity / bound {r['capacity_ratio'] or float('nan'):.3f} "
        ratios += f"(/ the followable bound {r['realizable_capacity_ratio'] or float('nan'):.3f})"
        figs = ", ".join(f"{k} {r[k]:.2f}" for k in keys)
        print(f"  {name:15s} ramp {r['grid_max_ramp_w_per_s']:,.0f} W/s, {figs}; {ratios}")


if __name__ == "__main__":
    main()
