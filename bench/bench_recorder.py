"""The recorder on the running demo: every tick on disk, what it costs the tick, the disk rate.

Runs the whole demo (simulators on their own thread, drivers, loop, API, store, recorder) in
this process for --seconds (default 600: the issue's ten-minute run), then stops it (the
open partition is compacted) and reads every row back. Prints: ticks published vs rows on disk,
missing sequence numbers, the longest gap between two rows' times; the recorder's cost inside
the tick (the row made and appended, and the hand-over once a second: p50 / p99 / max, µs);
its writer thread's time per batch; the bytes on disk and that rate as MB a day.

    python bench/bench_recorder.py [--seconds 600] [--period 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from controller.logs import setup_logging
from controller.record import TickRecord
from controller.recorder.files import folder_bytes
from controller.recorder.reader import read_tables
from controller.service import Controller
from controller.sitefile import plant_of
from drivers.sim.stack import SimulatorThread

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loop import bench_site  # the demo site at a given period, on free ports


async def run(seconds: float, period_s: float, data_dir: Path) -> dict[str, float]:
    site = bench_site(period_s, data_dir)
    plant = SimulatorThread(plant_of(site))
    await asyncio.to_thread(plant.start)
    controller = Controller(site)
    recorder = controller.recorder
    assert recorder is not None, "the recorder is off in this site file"
    seqs: list[int] = []
    tick_ns = np.zeros(int(seconds / period_s * 1.2) + 1000, dtype=np.int64)
    batch_ns: list[int] = []
    record, append = recorder.record, recorder._append

    def timed_record(rec: TickRecord) -> None:
        t0 = time.perf_counter_ns()
        record(rec)
        if len(seqs) < len(tick_ns):
            tick_ns[len(seqs)] = time.perf_counter_ns() - t0
        seqs.append(rec.seq)

    def timed_append(rows: list[tuple]) -> None:
        t0 = time.perf_counter_ns()
        append(rows)
        batch_ns.append(time.perf_counter_ns() - t0)

    recorder.record, recorder._append = timed_record, timed_append  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    started = time.monotonic()
    await asyncio.sleep(seconds)
    open_bytes = folder_bytes(recorder.folder)
    stop.set()
    await task
    elapsed = time.monotonic() - started
    await asyncio.to_thread(plant.stop)
    times, on_disk = [], []
    for table in read_tables(recorder.folder, columns=["seq"]):
        times.append(table.column("time_s").to_numpy())
        on_disk.append(table.column("seq").to_numpy())
    t, s = np.concatenate(times), np.concatenate(on_disk)
    cost = tick_ns[: min(len(seqs), len(tick_ns))] / 1e3
    closed_bytes = folder_bytes(recorder.folder)
    span_s = float(t[-1] - t[0])
    return {
        "published": len(seqs),
        "rows": len(s),
        "missing": len(set(seqs) - set(s.tolist())),
        "duplicates": len(s) - len(set(s.tolist())),
        "gap_max_s": float(np.diff(t).max()),
        "span_s": span_s,
        "elapsed_s": elapsed,
        "tick_p50_us": float(np.percentile(cost, 50)),
        "tick_p99_us": float(np.percentile(cost, 99)),
        "tick_max_us": float(cost.max()),
        "batch_p50_ms": float(np.percentile(batch_ns, 50)) / 1e6,
        "batch_max_ms": float(np.max(batch_ns)) / 1e6,
        "bytes": closed_bytes,
        "open_bytes": open_bytes,
        "mb_per_day": closed_bytes / span_s * 86400 / 1e6,
        "partitions": len(list(recorder.folder.glob("*.parquet"))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--period", type=float, default=0.1)
    args = parser.parse_args()
    setup_logging("WARNING")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(run(args.seconds, args.period, Path(tmp)))
    print(f"demo run: {r['elapsed_s']:.0f} s at {args.period * 1e3:.0f} ms a tick")
    print(
        f"rows: {r['rows']} on disk of {r['published']} ticks published; missing "
        f"{r['missing']}, twice {r['duplicates']}; longest gap between rows "
        f"{r['gap_max_s'] * 1e3:.0f} ms"
    )
    print(
        f"cost in the tick: p50 {r['tick_p50_us']:.1f} µs, p99 {r['tick_p99_us']:.1f} µs, "
        f"max {r['tick_max_us']:.0f} µs (row made and kept; the hand-over once a second)"
    )
    print(
        f"writer thread per batch (1 s of rows): p50 {r['batch_p50_ms']:.2f} ms, "
        f"max {r['batch_max_ms']:.1f} ms (append, fsync, compaction at a partition's end)"
    )
    print(
        f"disk: {r['bytes'] / 1e6:.2f} MB in {r['partitions']} Parquet partitions for "
        f"{r['span_s']:.0f} s of rows = {r['mb_per_day']:.0f} MB a day at this rate "
        f"(the open Arrow stream held {r['open_bytes'] / 1e6:.2f} MB before compaction)"
    )


if __name__ == "__main__":
    main()
