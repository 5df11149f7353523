"""Helpers for tests that run the simulated plant: a Modbus-only site, waiting on a condition."""

from __future__ import annotations

import asyncio
import copy
import time

from controller.config import SiteConfig
from controller.sitefile import parse_site


def modbus_only(site_data: dict) -> SiteConfig:
    data = copy.deepcopy(site_data)
    data["modules"] = [m for m in data["modules"] if m["id"] != "cooling"]
    return parse_site(data)


async def until(condition, timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
