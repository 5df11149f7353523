"""Helpers for tests that run the simulated plant: a Modbus-only site, the plant under the
controller as `gridpilot run` builds it, waiting on a condition."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator

from controller.config import SiteConfig
from controller.record import TickRecord
from controller.service import Controller
from controller.sitefile import parse_site, plant_of
from drivers.sim.stack import SimulatorStack


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


@contextlib.asynccontextmanager
async def controller_running(
    site: SiteConfig,
) -> AsyncIterator[tuple[SimulatorStack, list[TickRecord], Controller]]:
    """The plant and the controller as `gridpilot run` starts it (drivers, loop, operations,
    alarms, store, API); yields (stack, records, controller) with every tick's record as the
    controller published it, and stops it all on the way out."""
    stack = SimulatorStack(plant_of(site))
    await stack.start()
    controller = Controller(site)
    records: list[TickRecord] = []
    publish = controller.loop.publish

    def tee(rec: TickRecord) -> None:
        publish(rec)
        records.append(rec)

    controller.loop.publish = tee
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    try:
        yield stack, records, controller
    finally:
        stop.set()
        await task
        await stack.stop()
