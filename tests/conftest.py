"""Shared test helpers: free loopback ports and site files that use them."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import SiteConfig, default_site_text, parse_site


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def site_dict(data_dir: Path) -> dict[str, Any]:
    """The built-in demo site with every device and the API on a free loopback port."""
    data = yaml.safe_load(default_site_text())
    for module in data["modules"]:
        for device in module["devices"]:
            device["port"] = free_port()
    data["api_port"] = free_port()
    data["data_dir"] = str(data_dir)
    return data


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
