"""Speed of the dispatch core: `simulate` steps per second on one core, the same for its
plain-Python reference, and the per-call latency of `step` (and of the typed `dispatch`
the live loop calls) from Python; and the planner's time per re-plan.

    python bench/bench_dispatch.py [--steps 20000000]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np

from controller.config import DispatchConfig
from controller.dispatch import (
    AssetState,
    Bank,
    DispatchInputs,
    core,
    dispatch,
    initial_state,
    params_vector,
)
from controller.dispatch.planner import Event, plan
from controller.dispatch.replan import plan_settings
from drivers.sim.load import load_gpu_trace


def site_load(steps: int) -> np.ndarray:
    _, p = load_gpu_trace("h200_train_1p7b")
    return 2e6 + 10_000 * np.resize(p, steps)  # the trace tiled to length


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def time_plan(calls: int = 200) -> float:
    """Seconds per re-plan: a job's start and five checkpoints in view, 60 s ahead at 0.1 s."""
    events = (Event(13.6, 4.7e6), *(Event(23.6 + 10.2 * k, -4.7e6, 3.0) for k in range(5)))
    p = plan_settings(DispatchConfig(ramp_up_w_per_s=5e5, ramp_down_w_per_s=5e5))
    recent = np.full(10, 6e6)
    _, state = plan(30.0, 0.1, events, (), recent, 6e6, p)
    t0 = time.perf_counter()
    for _ in range(calls):
        plan(30.0, 0.1, events, state, recent, 6e6, p)
    return (time.perf_counter() - t0) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000_000)
    parser.add_argument("--reference-steps", type=int, default=200_000)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    cfg = DispatchConfig(lowpass_tau_s=10.0)
    cap_j = 20e6 * 3600
    bank = Bank(cap_j, 0.6 * cap_j, 0.0, 20e6, 20e6)
    params = params_vector(cfg, bank)
    state = initial_state(bank.energy_j)

    def inputs(n: int):
        return site_load(n), np.full(n, 50.0), np.full(n, math.inf)

    load, freq, cap = inputs(args.steps)
    out = core.outputs(args.steps)
    core.simulate(state, params, load, freq, cap, 0.1, out)  # compile, and touch the buffer
    t_fast = best_of(3, lambda: core.simulate(state, params, load, freq, cap, 0.1, out))
    t_fresh = best_of(
        1, lambda: core.simulate(state, params, load, freq, cap, 0.1, core.outputs(args.steps))
    )
    rload, rfreq, rcap = inputs(args.reference_steps)
    rout = core.outputs(args.reference_steps)
    t_ref = best_of(
        1, lambda: core.simulate_reference(state, params, rload, rfreq, rcap, 0.1, rout)
    )
    fast = args.steps / t_fast
    ref = args.reference_steps / t_ref

    step_in = np.array([6e6, 50.0, math.inf, math.nan])
    s = state
    core.step(s, params, step_in, 0.1)
    t0 = time.perf_counter()
    for _ in range(args.calls):
        s, _ = core.step(s, params, step_in, 0.1)
    t_step = (time.perf_counter() - t0) / args.calls

    assets = (
        AssetState("ups-a", 3e9, 5.4e9, 2.2e9, 7e6, 5e6),
        AssetState("ups-b", 3e9, 5.4e9, 2.2e9, 7e6, 5e6),
        AssetState("bess-1", 17e9, 28.8e9, 5.8e9, 4e6, 4e6),
    )
    live_in = DispatchInputs(6e6, 50.0, assets)
    s = initial_state()
    calls = args.calls // 10
    t0 = time.perf_counter()
    for _ in range(calls):
        s, _ = dispatch(live_in, cfg, s, 0.1)
    t_dispatch = (time.perf_counter() - t0) / calls

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"simulate (numba), {args.steps:,} steps: {fast / 1e6:8.1f} M steps/s")
    print(
        f"  the same into a fresh output buffer (page faults included): "
        f"{args.steps / t_fresh / 1e6:.1f} M steps/s"
    )
    print(
        f"simulate (Python reference), {args.reference_steps:,} steps: {ref / 1e6:8.3f} M steps/s"
    )
    print(f"numba / reference: {fast / ref:,.0f}x")
    print(f"step() from Python, per call: {t_step * 1e6:.2f} µs")
    print(f"dispatch() (3 assets, allocation, typed result), per call: {t_dispatch * 1e6:.1f} µs")
    print(f"planner, per re-plan (6 changes in view, 60 s ahead): {time_plan() * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
