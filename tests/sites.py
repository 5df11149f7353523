"""Site files for tests and benchmarks: the demo site with every port free on loopback."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from controller.sitefile import default_site_text


def _ports() -> Iterator[int]:
    """This test process's own ports, below the kernel's ephemeral range: pytest-xdist's
    workers (gw0, gw1, ...) and a run without them each count through a block of their own,
    so no two processes of a run, and no port the kernel hands out, ever share one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    block = int(worker[2:]) + 1 if worker.startswith("gw") else 0
    return iter(range(20000 + 3000 * block, 23000 + 3000 * block))


_next_ports = _ports()


def free_port() -> int:
    """A free loopback port, never the same one twice in a test session (a port just
    closed may still be taken: each is tried first)."""
    for port in _next_ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("this test process used up its 3,000 ports")


def site_dict(data_dir: Path) -> dict[str, Any]:
    """The built-in demo site with every device and the API on a free loopback port."""
    data = yaml.safe_load(default_site_text())
    for module in data["modules"]:
        for device in module["devices"]:
            device["port"] = free_port()
    data["api_port"] = free_port()
    tokens = free_port()
    data["simulation"]["inference_port"] = tokens
    data["token_sources"] = [{"id": "vllm-0", "url": f"http://127.0.0.1:{tokens}/metrics"}]
    data["data_dir"] = str(data_dir)
    return data
