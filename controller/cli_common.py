"""What the `gridpilot` commands share: who the audit log names for changes made from the
command line, the options every command spells the same, the site a command works on, and how
a refusal or a storage fault is said (one line, exit 2)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from controller.config import ConfigError, SiteConfig
from controller.dbfile import StorageError
from controller.opsdb import Actor
from controller.sitefile import load_site

CLI = Actor(None, "cli", "admin")  # who the audit log names for changes made here

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="site file (YAML); default: the built-in demo site"),
]
ApiPortOpt = Annotated[int | None, typer.Option("--api-port", help="API port (default 8080)")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="where the SQLite file lives")]
LogLevelOpt = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING")]


def site_of(
    config: Path | None,
    api_port: int | None = None,
    data_dir: Path | None = None,
    port_offset: int = 0,
) -> SiteConfig:
    overrides: dict[str, object] = {}
    if api_port is not None:
        overrides["api_port"] = api_port
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        return load_site(config, overrides, port_offset)
    except ConfigError as exc:
        raise refused(exc) from None


def refused(what: object) -> typer.Exit:
    """A bad input or a state that refuses the command: said on stderr; raise it (exit 2)."""
    typer.echo(f"gridpilot: {what}", err=True)
    return typer.Exit(2)


@contextmanager
def storage_errors_said() -> Iterator[None]:
    """The SQLite file damaged, gone or unreadable: said in one line, exit 2."""
    try:
        yield
    except StorageError as exc:
        raise refused(exc) from None
