"""Site files for tests and benchmarks: the demo site with every port free on loopback."""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from controller.sitefile import default_site_text

FIRST_PORT, LAST_PORT = 20000, 32000  # below the kernel's ephemeral range (32768 on)
BLOCK = 100  # ports a test process claims at a time
CLAIMS = Path(tempfile.gettempdir()) / "gridpilot-test-ports"
_held: list[int] = []  # the claimed blocks' locked file descriptors, until this process ends


def _claim(block: int) -> bool:
    """Hold a block of ports for this test process: a lock on a file of its own, which no
    other test process (another pytest-xdist worker, another run) can take while this one
    lives; the kernel drops it when the process ends, however it ends."""
    CLAIMS.mkdir(exist_ok=True)
    fd = os.open(CLAIMS / f"block-{block}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held.append(fd)
    return True


def _ports() -> Iterator[int]:
    """This process's ports: block after block it could claim, from a block of its own pid."""
    blocks = (LAST_PORT - FIRST_PORT) // BLOCK
    first = random.Random(os.getpid()).randrange(blocks)
    for n in range(blocks):
        block = (first + n) % blocks
        if _claim(block):
            yield from range(FIRST_PORT + block * BLOCK, FIRST_PORT + (block + 1) * BLOCK)


_next_ports = _ports()


def free_port() -> int:
    """A free loopback port, never the same one twice in a test session nor handed to two
    test processes at once (claimed), and not bound by anything else (tried first)."""
    for port in _next_ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port left in {FIRST_PORT}–{LAST_PORT}")


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
