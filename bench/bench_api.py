"""API under load while the control loop runs at 100 ms: `GET /v1/state` throughput and latency
at increasing concurrency, and the loop's late ticks and overruns meanwhile.

The simulated plant (`gridpilot sim`) and the controller (`gridpilot run`) run as two
processes, as the plant and the controller are two machines in production; this process is
the load: N connections with HTTP/1.1 keep-alive, each sending the next request when the last
answer arrived (a plain socket client, so the client's own cost stays small).

    python bench/bench_api.py [--seconds 10] [--concurrency 1 4 16 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.processes import wait_http
from tests.sites import site_dict


async def worker(port: int, key: str, path: str, until: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # No Nagle: a request is one small write that must leave at once, as browsers send them.
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()
    errors = 0
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()
    return errors


def loop_counters(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    wanted = ("gridpilot_loop_late_ticks_total", "gridpilot_loop_overruns_total",
              "gridpilot_loop_ticks_total")  # fmt: skip
    out = {}
    for line in text.splitlines():
        for name in wanted:
            if line.startswith(name + "{"):
                out[name] = float(line.rsplit(" ", 1)[1])
    return out


async def run_level(
    port: int, key: str, concurrency: int, seconds: float
) -> tuple[float, list[float], int]:
    until = time.perf_counter() + seconds
    latencies: list[float] = []
    started = time.perf_counter()
    errors = await asyncio.gather(
        *(worker(port, key, "/v1/state", until, latencies) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies, sum(errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gridpilot-bench-api-"))
    site_file = tmp / "site.yaml"
    site_file.write_text(yaml.safe_dump(site_dict(tmp / "data")))
    port = yaml.safe_load(site_file.read_text())["api_port"]
    base = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "controller.cli"]
    made = subprocess.run(
        [*cli, "keys", "create", "--role", "viewer", "--name", "bench", "--config", str(site_file)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = next(line.split()[1] for line in made.stdout.splitlines() if line.startswith("key "))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    plant = subprocess.Popen([*cli, "sim", "--config", str(site_file), "--log-level", "WARNING"],
                             **quiet)  # fmt: skip
    time.sleep(5.0)  # the OPC UA server takes a few seconds
    demo = subprocess.Popen([*cli, "run", "--config", str(site_file), "--log-level", "WARNING"],
                            **quiet)  # fmt: skip
    try:
        wait_http(f"{base}/readyz", demo)
        time.sleep(3.0)  # let it settle
        cpus = os.cpu_count()
        print(f"machine: {platform.machine()}, {cpus} CPUs, Python {platform.python_version()}")
        print(f"GET /v1/state for {args.seconds:.0f} s per level; the loop ticks every 100 ms")
        print(" conns   req/s   p50 ms   p99 ms   max ms  errors  late ticks  overruns  ticks")
        for n in args.concurrency:
            before = loop_counters(base)
            rate, lat, errors = asyncio.run(run_level(port, key, n, args.seconds))
            after = loop_counters(base)
            d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            ms = np.array(lat) * 1e3
            print(
                f"{n:6d} {rate:7.0f} {np.percentile(ms, 50):8.2f} {np.percentile(ms, 99):8.2f} "
                f"{ms.max():8.2f} {errors:7d} {d['gridpilot_loop_late_ticks_total']:11.0f} "
                f"{d['gridpilot_loop_overruns_total']:9.0f} {d['gridpilot_loop_ticks_total']:6.0f}"
            )
    finally:
        for proc in (demo, plant):
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
