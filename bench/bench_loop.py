"""Control-loop timing on the demo stack: tick duration and lateness at 100 ms and 20 ms.

Runs the whole demo (simulators on their own thread, drivers, loop, API, store) in this
process on loopback, once per period, and prints p50 / p99 / max of each tick's work time and
of its lateness against the schedule, the longest gap between two tick starts, and the
overrun count (ticks skipped because the loop fell a whole period behind).

    python bench/bench_loop.py [--seconds 60] [--periods 0.1 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from controller.config import SiteConfig
from controller.logs import setup_logging
from controller.record import TickRecord
from controller.service import Controller
from controller.sitefile import parse_site, plant_of
from drivers.sim.stack import SimulatorThread

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.sites import site_dict


def bench_site(period_s: float, data_dir: Path) -> SiteConfig:
    data = site_dict(data_dir)
    data["loop_period_s"] = period_s
    for module in data["modules"]:
        for device in module["devices"]:
            if device["kind"] != "cdu":  # power devices refresh at least once a tick
                device["poll_period_s"] = min(0.05, period_s)
    return parse_site(data)


async def run_once(period_s: float, seconds: float, data_dir: Path) -> dict[str, float]:
    site = bench_site(period_s, data_dir)
    plant = SimulatorThread(plant_of(site))
    await asyncio.to_thread(plant.start)
    controller = Controller(site)
    # (start, duration, lateness, overruns so far, auto?): numbers only, so the benchmark's
    # own bookkeeping does not grow the heap the garbage collector has to walk.
    records: list[tuple[float, float, float, int, bool]] = []
    publish = controller.loop.publish

    def recording(rec: TickRecord) -> None:
        records.append(
            (rec.monotonic, rec.duration_s, rec.lateness_s, rec.overruns_total, rec.mode == "auto")
        )
        publish(rec)

    controller.loop.publish = recording
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    await asyncio.sleep(3.0)  # connect and settle
    first = len(records)
    await asyncio.sleep(seconds)
    stop.set()
    await task
    await asyncio.to_thread(plant.stop)
    window = np.array([r for r in records[first:] if r[4]])
    dur = window[:, 1] * 1e3
    late = np.maximum(window[:, 2], 0.0) * 1e3
    gaps = np.diff(window[:, 0]) * 1e3
    return {
        "ticks": len(window),
        "expected": seconds / period_s,
        "dur_p50": float(np.percentile(dur, 50)),
        "dur_p99": float(np.percentile(dur, 99)),
        "dur_max": float(dur.max()),
        "late_p50": float(np.percentile(late, 50)),
        "late_p99": float(np.percentile(late, 99)),
        "late_max": float(late.max()),
        "gap_max": float(gaps.max()),
        "overruns": float(records[-1][3] - records[first][3]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--periods", type=float, nargs="+", default=[0.1, 0.02])
    args = parser.parse_args()
    setup_logging("WARNING")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"each run: {args.seconds:.0f} s of ticks after 3 s to settle; all times in ms")
    header = (
        f"{'period':>7} {'ticks':>12} {'dur p50':>8} {'dur p99':>8} {'dur max':>8} "
        f"{'late p50':>9} {'late p99':>9} {'late max':>9} {'max gap':>8} {'overruns':>9}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for period in args.periods:
            r = asyncio.run(run_once(period, args.seconds, Path(tmp) / f"p{period}"))
            gc.unfreeze()  # let the last run's plant and controller go before the next
            gc.collect()
            print(
                f"{period * 1e3:>5.0f}ms {r['ticks']:>5}/{r['expected']:<6.0f} "
                f"{r['dur_p50']:>8.2f} {r['dur_p99']:>8.2f} {r['dur_max']:>8.2f} "
                f"{r['late_p50']:>9.2f} {r['late_p99']:>9.2f} {r['late_max']:>9.2f} "
                f"{r['gap_max']:>8.2f} "
                f"{r['overruns']:>9.0f}"
            )


if __name__ == "__main__":
    main()
