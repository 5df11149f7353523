"""Control-loop timing on the demo stack: tick duration and lateness at 100 ms and 20 ms.

Runs the demo's controller (drivers, loop, API, store) in this process and the simulated
plant in another (a controller's plant is hardware: its simulators' Python must not take the
controller's interpreter lock), on loopback, once per period, and prints p50 / p99 / max of
each tick's work time and of its lateness against the schedule, the longest gap between two
tick starts, the late ticks (started more than a tenth of a period late) and the overrun count
(ticks skipped because the loop fell a whole period behind).

With --disk-stress, each run also has: operators writing through the API (setpoint changes
with a TTL, whose reverts the ticks hand to the writer; demand-response events starting and
ending; alarm acknowledgements) from 4 connections; a device dropping its link every few
seconds (alarms raised and cleared); and another process holding the SQLite file's write lock
for 2 s out of every 3. It then prints what the writers went through, and checks that every
alarm raised was stored once the lock was gone.

With --stream-clients N, N consoles (another process) watch /v1/stream throughout each run;
it prints how many tick summaries each got.

With --planner, the planner runs (learning the rhythm too, re-planning once a second in its
own process) while a scheduler posts a job start or stop notice every 5 s, 20 s ahead; it
prints the plans made and the planner's time per plan: from the request to the plan in hand,
of that the time its process worked on it, and of that its CPU time (the goal: 0 late ticks,
≤ 10 ms a plan).

    python bench/bench_loop.py [--seconds 60] [--periods 0.1 0.02] [--disk-stress]
                               [--stream-clients 50] [--planner]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from controller.cli_common import CLI
from controller.config import SiteConfig
from controller.logs import setup_logging
from controller.plans import Plan
from controller.record import TickRecord
from controller.service import Controller
from controller.sitefile import load_site, parse_site, plant_of
from drivers.sim.faults import Fault
from drivers.sim.stack import SimulatorStack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.sites import site_dict


def bench_site(period_s: float, data_dir: Path, planner: bool = False) -> SiteConfig:
    """The test plant's site, its power devices polled every tick."""
    return parse_site(bench_site_data(period_s, data_dir, planner))


def bench_site_data(period_s: float, data_dir: Path, planner: bool = False) -> dict[str, Any]:
    """`bench_site` as the data of a site file."""
    data = site_dict(data_dir)
    data["loop_period_s"] = period_s
    data["planner"] = {"enabled": planner, "learn_rhythm": planner}
    for module in data["modules"]:
        for device in module["devices"]:
            if device["kind"] != "cdu":  # power devices refresh at least once a tick
                device["poll_period_s"] = min(0.05, period_s)
    return data


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
while True:
    conn.execute("BEGIN EXCLUSIVE")  # what a backup or a stuck tool does to the file
    time.sleep(2.0)
    conn.execute("COMMIT")
    time.sleep(1.0)
"""


def _outcome(r: httpx.Response | BaseException) -> str:
    """ok; refused by the API's own rules (429: the key's rate of changes; 422: a change that
    changes nothing, as four operators cycling five values send); failed (5xx, no answer)."""
    if isinstance(r, BaseException):
        return "failed"
    if r.status_code in (422, 429):
        return "refused"
    return "ok" if r.status_code < 300 else "failed"


async def operator(base: str, key: str, until: float, counts: dict[str, int]) -> None:
    """One operator's connection: PATCHes with a TTL, short events, acknowledgements."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30.0) as api:
        k = 0
        while time.monotonic() < until:
            k += 1
            now = time.time()
            requests = [
                api.patch("/v1/setpoints", json={"droop": 0.04 + 0.001 * (k % 5), "ttl_s": 1.0}),
                api.post(
                    "/v1/events",
                    json={"kind": "import_cap", "value_w": 2e7, "start_s": now + 0.5,
                          "end_s": now + 1.5},
                ),
            ]  # fmt: skip
            for r in await asyncio.gather(*requests, return_exceptions=True):
                counts[_outcome(r)] += 1
            alarms = await api.get("/v1/alarms", params={"active": "true"})
            for a in alarms.json()["alarms"][:1] if alarms.status_code == 200 else []:
                counts[_outcome(await api.post(f"/v1/alarms/{a['id']}/ack"))] += 1
            await asyncio.sleep(0.2)


async def operators(base: str, key: str, seconds: float, n: int = 4) -> dict[str, int]:
    counts = {"ok": 0, "refused": 0, "failed": 0}
    until = time.monotonic() + seconds
    await asyncio.gather(*(operator(base, key, until, counts) for _ in range(n)))
    return counts


async def streamer(base: str, key: str, until: float) -> int:
    """One console's /v1/stream: the tick summaries it got before `until`."""
    got = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(base_url=base, headers=headers, timeout=30.0) as api,
        api.stream("GET", "/v1/stream") as r,
    ):
        async for line in r.aiter_lines():
            got += line.startswith("data: ")
            if time.monotonic() > until:
                break
    return got


async def streamers(base: str, key: str, seconds: float, n: int) -> dict[str, int]:
    until = time.monotonic() + seconds
    got = await asyncio.gather(*(streamer(base, key, until) for _ in range(n)))
    return {"clients": n, "min": min(got), "max": max(got)}


NOTICE_EVERY_S = 5.0
PLANT_SPARE_S = 60.0  # the plant outlives a run's window by this much (settling, stopping)
NOTICE_AHEAD_S = 20.0


async def scheduler(controller: Controller, until: float) -> int:
    """A job scheduler's notices, alternately a 1 MW job start and stop, each 20 s ahead;
    stored on a thread as the API's commands are (the file is no work for the event loop)."""
    posted = 0
    while time.monotonic() < until:
        kind = "job_start" if posted % 2 == 0 else "job_stop"
        body = {"kind": kind, "at_s": time.time() + NOTICE_AHEAD_S, "power_w": 1e6}
        await asyncio.to_thread(controller.operations.notices.add, body, CLI)
        posted += 1
        await asyncio.sleep(NOTICE_EVERY_S)
    return posted


async def serve_plant(site_file: Path, seconds: float) -> None:
    """The simulated plant, in the process that runs this (a controller's plant is hardware:
    its simulators must not share the controller's interpreter), until SIGTERM or `seconds`.
    From SIGUSR1 to SIGUSR2, ups-b drops its link for 3 s in every 6 (device_down raised and
    cleared)."""
    stack = SimulatorStack(plant_of(load_site(site_file)))
    await stack.start()
    loop, done = asyncio.get_running_loop(), asyncio.Event()
    flapping: list[asyncio.Task[None]] = []

    def steady() -> None:
        for task in flapping:
            task.cancel()
        flapping.clear()
        stack.set_fault("ups-b", Fault.NONE)

    loop.add_signal_handler(signal.SIGUSR1, lambda: flapping.append(loop.create_task(flap(stack))))
    loop.add_signal_handler(signal.SIGUSR2, steady)
    loop.add_signal_handler(signal.SIGTERM, done.set)
    print("ready", flush=True)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), seconds)
    finally:
        steady()
        await stack.stop()


async def flap(stack: SimulatorStack) -> None:
    while True:
        stack.set_fault("ups-b", Fault.DROP)
        await asyncio.sleep(3.0)
        stack.set_fault("ups-b", Fault.NONE)
        await asyncio.sleep(3.0)


@contextlib.asynccontextmanager
async def plant_running(site_file: Path, seconds: float) -> AsyncIterator[subprocess.Popen[str]]:
    """`serve_plant` in a process of its own, from when its servers listen until the run
    ends, however it ends."""
    plant = subprocess.Popen(
        [sys.executable, __file__, "--plant", str(site_file), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = await asyncio.wait_for(asyncio.to_thread(plant.stdout.readline), 60)  # type: ignore[union-attr]
        if ready.strip() != "ready":
            raise RuntimeError(f"the simulated plant did not start (exit code {plant.poll()})")
        yield plant
    finally:
        plant.terminate()
        try:
            await asyncio.to_thread(plant.wait, 10)
        except subprocess.TimeoutExpired:
            plant.kill()


async def run_once(
    period_s: float,
    seconds: float,
    data_dir: Path,
    stress: bool = False,
    stream_clients: int = 0,
    planner: bool = False,
) -> dict[str, float]:
    data = bench_site_data(period_s, data_dir, planner)
    site, site_file = parse_site(data), data_dir / "site.yaml"
    data_dir.mkdir(parents=True, exist_ok=True)
    site_file.write_text(yaml.safe_dump(data))
    async with plant_running(site_file, seconds + PLANT_SPARE_S) as plant:
        return await measure(site, plant, seconds, stress, stream_clients, planner)


async def measure(
    site: SiteConfig,
    plant: subprocess.Popen[str],
    seconds: float,
    stress: bool,
    stream_clients: int,
    planner: bool,
) -> dict[str, float]:
    """One run's figures: the controller on `site`, its plant running."""
    period_s = site.loop_period_s
    controller = Controller(site)
    _, key = controller.db.create_key("bench-operator", "operator", CLI)
    # (start, duration, lateness, overruns so far, auto?): numbers only, so the benchmark's
    # own bookkeeping does not grow the heap the garbage collector has to walk.
    records: list[tuple[float, float, float, int, bool]] = []
    plans: list[tuple[float, float, float, float]] = []  # (first read, round trip, work, CPU)
    newest: list[Plan | None] = [None]
    publish = controller.loop.publish

    def recording(rec: TickRecord) -> None:
        records.append(
            (rec.monotonic, rec.duration_s, rec.lateness_s, rec.overruns_total, rec.mode == "auto")
        )
        if rec.plan is not None and rec.plan is not newest[0]:  # each plan once
            newest[0] = rec.plan
            plans.append((rec.monotonic, rec.plan.duration_s, rec.plan.work_s, rec.plan.cpu_s))
        publish(rec)

    controller.loop.publish = recording
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    await asyncio.sleep(3.0)  # connect and settle
    first = len(records)
    counts = {"ok": 0, "refused": 0, "failed": 0}
    streamed = {"clients": 0, "min": 0, "max": 0}
    base = f"http://127.0.0.1:{site.api_port}"
    notices = (
        asyncio.create_task(scheduler(controller, time.monotonic() + seconds)) if planner else None
    )
    with contextlib.ExitStack() as stack:
        if stream_clients:  # consoles watching the stream, from a process of their own
            watchers = subprocess.Popen(
                [sys.executable, __file__, "--streamers", base, key, str(seconds),
                 str(stream_clients)],
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            stack.callback(watchers.kill)
        if stress:
            # The operators and the locking tool are processes of their own, as they are in
            # production: their work must not run on the controller's event loop.
            db_file = str(site.data_dir / "gridpilot.sqlite")
            locker = subprocess.Popen([sys.executable, "-c", LOCKER, db_file])
            stack.callback(locker.kill)
            load = subprocess.Popen(
                [sys.executable, __file__, "--operators", base, key, str(seconds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            stack.callback(load.kill)
            plant.send_signal(signal.SIGUSR1)  # ups-b's link flaps while the window lasts
            stack.callback(plant.send_signal, signal.SIGUSR2)
            await asyncio.sleep(seconds)
            out, _ = await asyncio.to_thread(load.communicate, timeout=60)
            counts = json.loads(out.strip().splitlines()[-1])
        else:
            await asyncio.sleep(seconds)
        last = len(records)
        if stream_clients:
            out, _ = await asyncio.to_thread(watchers.communicate, timeout=60)
            streamed = json.loads(out.strip().splitlines()[-1])
    posted = await notices if notices is not None else 0
    writers = (controller.ops_writer, controller.store.writer)
    failures = sum(w.failures_total for w in writers)
    raised = controller.alarms.raised_total
    stop.set()
    await task  # the controller drains its writers as it stops (the lock is gone now)
    stored = {a["id"] for a in controller_db_alarms(site)}  # a fresh file: this run's alone
    window = np.array([r for r in records[first:last] if r[4] or stress])
    dur = window[:, 1] * 1e3
    late = np.maximum(window[:, 2], 0.0) * 1e3
    gaps = np.diff(window[:, 0]) * 1e3
    start, end = window[0, 0], window[-1, 0]
    timed = np.array([p[1:] for p in plans if start <= p[0] <= end] or [(np.nan,) * 3]) * 1e3
    plan_ms, work_ms, cpu_ms = timed.T
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
        "late": float(sum(1 for r in window if r[2] > 0.1 * period_s)),
        "overruns": float(records[last - 1][3] - records[first][3]),
        "api_ok": counts["ok"],
        "api_refused": counts["refused"],
        "api_failed": counts["failed"],
        "write_failures": failures,
        "alarms_raised": raised,
        "alarms_stored": len(stored),
        "streamed": streamed,
        "notices": posted,
        "plans": int(np.isfinite(plan_ms).sum()),
        "plan_p50": float(np.percentile(plan_ms, 50)),
        "plan_p99": float(np.percentile(plan_ms, 99)),
        "plan_max": float(plan_ms.max()),
        "plan_work_p50": float(np.percentile(work_ms, 50)),
        "plan_work_p99": float(np.percentile(work_ms, 99)),
        "plan_cpu_p50": float(np.percentile(cpu_ms, 50)),
        "plan_cpu_max": float(cpu_ms.max()),
    }


def controller_db_alarms(site: SiteConfig) -> list[dict]:
    from controller.opsdb import OpsDB

    db = OpsDB(site.data_dir / "gridpilot.sqlite")
    try:
        return db.alarms(limit=100_000)
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--periods", type=float, nargs="+", default=[0.1, 0.02])
    parser.add_argument(
        "--disk-stress",
        action="store_true",
        help="API writes, alarms, and another process locking the SQLite file",
    )
    parser.add_argument(
        "--stream-clients",
        type=int,
        default=0,
        help="this many /v1/stream clients (consoles) watch each run, from another process",
    )
    parser.add_argument(
        "--planner",
        action="store_true",
        help="the planner on (and learning the rhythm), with a job notice posted every 5 s",
    )
    parser.add_argument(
        "--operators", nargs=3, metavar=("URL", "KEY", "SECONDS"), help=argparse.SUPPRESS
    )  # the load process --disk-stress starts
    parser.add_argument(
        "--streamers", nargs=4, metavar=("URL", "KEY", "SECONDS", "N"), help=argparse.SUPPRESS
    )  # the watchers --stream-clients starts
    parser.add_argument(
        "--plant", nargs=2, metavar=("SITE", "SECONDS"), help=argparse.SUPPRESS
    )  # the simulated plant each run starts
    args = parser.parse_args()
    if args.plant:
        site_file, seconds = args.plant
        setup_logging("ERROR")  # its faults are the bench's own doing
        asyncio.run(serve_plant(Path(site_file), float(seconds)))
        return
    if args.streamers:
        base, key, seconds, n = args.streamers
        print(json.dumps(asyncio.run(streamers(base, key, float(seconds), int(n)))))
        return
    if args.operators:
        base, key, seconds = args.operators
        print(json.dumps(asyncio.run(operators(base, key, float(seconds)))))
        return
    setup_logging("WARNING")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"each run: {args.seconds:.0f} s of ticks after 3 s to settle; all times in ms")
    header = (
        f"{'period':>7} {'ticks':>12} {'dur p50':>8} {'dur p99':>8} {'dur max':>8} "
        f"{'late p50':>9} {'late p99':>9} {'late max':>9} {'max gap':>8} {'late':>5} "
        f"{'overruns':>9}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for period in args.periods:
            r = asyncio.run(
                run_once(
                    period,
                    args.seconds,
                    Path(tmp) / f"p{period}",
                    args.disk_stress,
                    args.stream_clients,
                    args.planner,
                )
            )
            gc.unfreeze()  # let the last run's plant and controller go before the next
            gc.collect()
            print(
                f"{period * 1e3:>5.0f}ms {r['ticks']:>5}/{r['expected']:<6.0f} "
                f"{r['dur_p50']:>8.2f} {r['dur_p99']:>8.2f} {r['dur_max']:>8.2f} "
                f"{r['late_p50']:>9.2f} {r['late_p99']:>9.2f} {r['late_max']:>9.2f} "
                f"{r['gap_max']:>8.2f} {r['late']:>5.0f} "
                f"{r['overruns']:>9.0f}"
            )
            if args.stream_clients:
                s = r["streamed"]
                print(
                    f"        stream: {s['clients']} clients, each got {s['min']}–{s['max']} "
                    f"tick summaries of {r['ticks']} ticks"
                )
            if args.planner:
                print(
                    f"        planner: {r['plans']} plans, {r['notices']} notices posted; per "
                    f"plan, asked to in hand p50 {r['plan_p50']:.2f}, p99 {r['plan_p99']:.2f}, "
                    f"max {r['plan_max']:.2f}; in its process p50 {r['plan_work_p50']:.2f}, "
                    f"p99 {r['plan_work_p99']:.2f} (CPU p50 {r['plan_cpu_p50']:.2f}, "
                    f"max {r['plan_cpu_max']:.2f})"
                )
            if args.disk_stress:
                print(
                    f"        API writes ok {r['api_ok']}, refused by its rules "
                    f"{r['api_refused']}, failed {r['api_failed']}; "
                    f"storage faults met by the writers {r['write_failures']}; "
                    f"alarms raised {r['alarms_raised']}, stored {r['alarms_stored']}"
                )


if __name__ == "__main__":
    main()
