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
