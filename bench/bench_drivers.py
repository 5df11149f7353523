"""Driver latency over loopback: one poll of every point, per device type; and a scale run,
100 simulated Modbus devices polled concurrently in one tick.

The simulators run in a separate process (as real devices are elsewhere), the drivers in this
one; each poll is the driver's own (block reads, decoding, scale factors, validity).

    python bench/bench_drivers.py [--polls 300] [--devices 100] [--ticks 200]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from controller.config import DeviceConfig
from controller.logs import setup_logging
from controller.service import make_driver
from controller.sitefile import parse_site, plant_of
from drivers.maploader import load_map
from drivers.sim.modbus_server import ModbusDeviceServer, RegisterImage
from drivers.sim.stack import SimulatorStack
from tests.sites import free_port, site_dict


def percentiles_ms(samples: list[float]) -> str:
    a = np.array(samples) * 1e3
    return f"p50 {np.percentile(a, 50):6.2f} ms  p99 {np.percentile(a, 99):6.2f} ms"


def serve_site(data: dict, ready: mp.Event, stop: mp.Event) -> None:
    setup_logging("WARNING")

    async def main() -> None:
        stack = SimulatorStack(plant_of(parse_site(data)))
        await stack.start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await stack.stop()

    asyncio.run(main())


def serve_many(ports: list[int], ready: mp.Event, stop: mp.Event) -> None:
    setup_logging("WARNING")

    async def main() -> None:
        servers, images = [], []
        for port in ports:
            image = RegisterImage(load_map("ups"))
            image.set_many({"output_power_w": 3e6, "battery_soc_ratio": 0.6, "device_heartbeat": 1})
            server = ModbusDeviceServer(image, "127.0.0.1", port, 1, lambda *_: None)
            await server.start()
            servers.append(server)
            images.append(image)
        gc.collect()
        gc.freeze()  # as the service does: a long-lived heap the collector need not walk
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
            for image in images:  # each device's heartbeat counts seconds, as the stack's do
                image.set("device_heartbeat", int(time.monotonic()) % 65536)
        for server in servers:
            await server.stop()

    asyncio.run(main())


def in_process(target, *args) -> tuple[mp.Process, mp.Event]:
    ready, stop = mp.Event(), mp.Event()
    proc = mp.Process(target=target, args=(*args, ready, stop), daemon=True)
    proc.start()
    if not ready.wait(60):
        raise RuntimeError("simulators did not start")
    return proc, stop


async def per_type(polls: int) -> None:
    data = site_dict(Path(tempfile.mkdtemp()) / "data")
    proc, stop = in_process(serve_site, data)
    try:
        site = parse_site(data)
        seen: set[str] = set()
        for device in site.devices:
            if device.kind in seen:
                continue
            seen.add(device.kind)
            driver = make_driver(device.model_copy(update={"timeout_s": 5.0}))
            await driver.open()
            for _ in range(polls):
                await driver.read_once()
            protocol = driver.map.protocol
            print(
                f"{device.kind:6} ({protocol}, {len(driver.values):2} points, "
                f"{len(driver.map.blocks) or 1} request(s)): "
                f"{percentiles_ms(list(driver.counters.latencies_s)[-polls:])}"
            )
            await driver.stop()
    finally:
        stop.set()
        proc.join(10)


async def scale(devices: int, ticks: int, period_s: float) -> None:
    ports = [free_port() for _ in range(devices)]
    proc, stop = in_process(serve_many, ports)
    try:
        drivers = [
            make_driver(DeviceConfig(id=f"ups-{i}", kind="ups", port=p, timeout_s=2.0))
            for i, p in enumerate(ports)
        ]
        await asyncio.gather(*(d.open() for d in drivers))
        gc.collect()
        gc.freeze()
        whole: list[float] = []
        cpu_start = time.process_time()
        next_tick = time.monotonic()
        for _ in range(ticks):
            next_tick += period_s
            started = time.perf_counter()
            await asyncio.gather(*(d.read_once() for d in drivers))
            whole.append(time.perf_counter() - started)
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        cpu_ms = (time.process_time() - cpu_start) / ticks * 1e3
        each = [x for d in drivers for x in d.counters.latencies_s]
        print(
            f"{devices} UPS devices, one poll each per {period_s * 1e3:.0f} ms tick, {ticks} ticks:"
        )
        print(
            f"  whole poll (all devices):  {percentiles_ms(whole)}  max {max(whole) * 1e3:.2f} ms"
        )
        print(f"  each device's poll:        {percentiles_ms(each)}")
        print(f"  the drivers' CPU time per tick: {cpu_ms:.1f} ms (the simulators' is apart)")
        for d in drivers:
            await d.stop()
    finally:
        stop.set()
        proc.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--polls", type=int, default=300)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--period-s", type=float, default=0.1)
    args = ap.parse_args()
    setup_logging("WARNING")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"poll of every point, {args.polls} polls per device type, loopback:")
    asyncio.run(per_type(args.polls))
    asyncio.run(scale(args.devices, args.ticks, args.period_s))


if __name__ == "__main__":
    main()
