"""The least stored energy a battery needs, proven. The bound's least-stored-energy program
(`controller/replay/bound.py`) is a linear program, so a step may charge and discharge at once
and burn energy in the losses, which no battery can: its figure is a lower bound that no
battery reaches. Here the same program gets one binary per step (a battery charges or
discharges, never both) and HiGHS's branch and bound (scipy.optimize.milp) solves it: its
dual bound is proven (no controller, knowing the whole trace, does with less), its best
schedule is one a battery can follow; solved, the two meet. It holds for the battery the
replay models (its power and energy limits, 96 % each way, a power held through each step),
starting and ending as the run does (a lossless one needs less: 2.052 kWh on the whole
trace). Beside them the linear program's
figure and the followable bound's (priced throughput, as replay reports it), and the
controller's ratio to each.

Cases: `whole`, the shipped training trace with notices from its events file (replay
`--events`; solved here in under two minutes), and `tiled`, the ten-minute tiling of
bench/bench_rhythm.py from 100 s with the learned rhythm (5,000 steps: it may stop at the time
limit with a gap; its dual bound still holds).

    python bench/bench_bound_exact.py [--time-limit-s 1200] [--cases whole tiled]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from controller.dispatch import rhythm
from controller.replay.bound import (
    OneWay,
    capacity_program,
    min_capacity_kwh,
    realizable_capacity_kwh,
)
from controller.replay.events import read_events
from controller.replay.figures import J_PER_KWH
from controller.replay.run import ReplayRun, ReplaySettings, bound_problem, simulate, window
from controller.replay.trace import read_trace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rhythm import tiled  # the ten-minute tiling, as bench_rhythm's

TRACE = Path(__file__).resolve().parents[1] / "drivers" / "sim" / "traces" / "h200_train_1p7b.csv"
TILED_FROM_S = 100.0  # bench_rhythm's --figures-from-s


def case(name: str, run: ReplayRun, dt_s: float, s: ReplaySettings, limit_s: float) -> None:
    p = bound_problem(run, dt_s, s)
    online = run.figures.required_capacity_kwh
    lp, real = min_capacity_kwh(p), realizable_capacity_kwh(p)
    exact = OneWay(limit_s)
    # Unpriced: the dual bound is then the stored energy's alone (a battery cannot cycle
    # energy for nothing, so no whisker of price is needed as the LP's is).
    x = exact(p, capacity_program(p, 0.0))
    n = len(p.load_w)
    found = float((x[-2] - x[-1]) / J_PER_KWH) if x is not None else float("nan")
    print(f"{name}: the controller stores {online:.3f} kWh ({n:,} steps)")
    print(f"  the linear program        {lp:.3f} kWh  (the controller / it {online / lp:.3f})")
    print(f"  the followable bound      {real:.3f} kWh  ({online / real:.3f})")
    least = math.floor(exact.dual_kwh * 1e3) / 1e3  # a lower bound: rounded down
    how = exact.status.split("(")[0].strip()
    print(f"  one way at a time (MILP)  at least {least:.3f} kWh ({online / least:.3f}), ", end="")
    print(f"one of {found:.3f} found (gap {exact.gap:.1e}); {how} in {exact.seconds:.0f} s")
    print(f"  the linear program / the proven least: {lp / least:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit-s", type=float, default=1200.0)
    parser.add_argument("--cases", nargs="+", choices=("whole", "tiled"), default=["whole"])
    args = parser.parse_args()
    s = ReplaySettings()
    tr = read_trace(TRACE)
    load, dt = tr.site_load_w(s.gpus, s.base_w), tr.dt_s
    print(f"{TRACE.name}, 10,000 GPUs + 2 MW, 0.5 MW/s, a {s.battery_w / 1e6:g} MW battery")
    if "whole" in args.cases:
        told = read_events(TRACE.with_suffix(".events.csv"), 30.0, 5.0, s.gpus * s.job_w_per_gpu)
        run = simulate(load, dt, s, notices=told, start_s=float(tr.t_s[0]))
        case("whole trace, --events", run, dt, s, args.time_limit_s)
    if "tiled" in args.cases:
        gpu_w, dt, _ = tiled(600.0)
        run = simulate(s.base_w + s.gpus * gpu_w, dt, s, learn=rhythm.RhythmSettings())
        first = round(TILED_FROM_S / dt)
        case(
            "tiled to 600 s, --learn-rhythm, from 100 s",
            window(run, first, dt),
            dt,
            s,
            args.time_limit_s,
        )


if __name__ == "__main__":
    main()
