"""Helpers for tests that run the simulated plant: a Modbus-only site, the plant under the
controller as `gridpilot run` builds it, waiting on a condition."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controller.cli_common import CLI
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


@dataclass
class Running:
    stack: SimulatorStack
    controller: Controller
    records: list[TickRecord]
    api: httpx.AsyncClient

    def metric(self, name: str, **labels: str) -> float | None:
        """A sample of the controller's own /metrics, as Prometheus would scrape it."""
        text = self._scrape
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return None

    async def scrape(self) -> None:
        self._scrape = (await self.api.get("/metrics")).text


@contextlib.asynccontextmanager
async def site_running(site: SiteConfig) -> AsyncIterator[Running]:
    """The whole site under the controller, in auto, with an operator's API client."""
    async with controller_running(site) as (stack, records, controller):
        _, key = controller.db.create_key("test-operator", "operator", CLI)
        base = f"http://127.0.0.1:{site.api_port}"
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=5.0) as api:
            await until(lambda: records and records[-1].mode == "auto", 20, "auto mode")
            yield Running(stack, controller, records, api)
