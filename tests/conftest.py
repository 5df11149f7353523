"""Shared test helpers: free loopback ports and site files that use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import SiteConfig
from controller.sitefile import parse_site, plant_of
from drivers.sim.stack import SimulatorStack
from tests.plant import modbus_only
from tests.sites import site_dict

# Modules whose claims are timings under a real clock (loop lateness, fail-over times, stream
# and browser deadlines, the API's edge under floods) or that run many processes at once:
# `make test` runs them alone after the rest has run on two workers (pytest-xdist), so no
# other test takes their CPU. A single test elsewhere may say so itself (`@pytest.mark.serial`).
SERIAL = {
    "test_captures.py",
    "test_console.py",
    "test_demo_e2e.py",
    "test_edge.py",
    "test_faults.py",
    "test_ha.py",
    "test_ha_election.py",
    "test_ha_replica.py",
    "test_loop.py",
    "test_planning.py",
    "test_stream.py",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SERIAL:
            item.add_marker(pytest.mark.serial)


@pytest.fixture
def site_data(tmp_path: Path) -> dict[str, Any]:
    return site_dict(tmp_path / "data")


@pytest.fixture
def site(site_data: dict[str, Any]) -> SiteConfig:
    return parse_site(site_data)


@pytest.fixture
def site_file(tmp_path: Path, site_data: dict[str, Any]) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site_data))
    return path


@pytest.fixture
async def modbus_plant(site_data: dict[str, Any]):
    """The site's Modbus devices (no OPC UA: it takes seconds to start), physics running."""
    site = modbus_only(site_data)
    stack = SimulatorStack(plant_of(site))
    await stack.start()
    yield site, stack
    await stack.stop()
