"""Reading a YAML file (or a packaged resource) with errors that name the file."""

from __future__ import annotations

from importlib.resources.abc import Traversable
from pathlib import Path

import yaml


def read_yaml(file: Path | Traversable, source: str, error: type[Exception]) -> object:
    """Parsed YAML of `file`; unreadable or malformed files raise `error` naming `source`."""
    try:
        text = file.read_text()
    except OSError as exc:
        raise error(f"{source}: cannot read the file: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {exc}") from None
