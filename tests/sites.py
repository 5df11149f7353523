"""Site files for tests and benchmarks: the demo site with every port free on loopback."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import yaml

from controller.sitefile import default_site_text

_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback port, never the same one twice in a test session (the kernel may hand
    a just-closed port out again at once)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


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
