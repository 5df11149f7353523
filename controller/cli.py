"""`gridpilot`: the command line. `demo` runs everything; `run` the controller; `sim` the plant."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated

import typer

from controller.config import ConfigError, SiteConfig, load_site
from controller.demo import run_controller, run_demo, run_simulators
from controller.logs import setup_logging

app = typer.Typer(
    help="gridpilot: a real-time, grid-interactive controller for AI data centers.",
    no_args_is_help=True,
    add_completion=False,
)
log = logging.getLogger("gridpilot")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="site file (YAML); default: the built-in demo site"),
]
ApiPortOpt = Annotated[int | None, typer.Option("--api-port", help="API port (default 8080)")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="where the SQLite file lives")]
LogLevelOpt = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING")]


def _site(
    config: Path | None, api_port: int | None = None, data_dir: Path | None = None
) -> SiteConfig:
    overrides: dict[str, object] = {}
    if api_port is not None:
        overrides["api_port"] = api_port
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        return load_site(config, overrides)
    except ConfigError as exc:
        typer.echo(f"gridpilot: {exc}", err=True)
        raise typer.Exit(2) from None


def _start(
    entry: Callable[[SiteConfig], Coroutine[None, None, None]],
    config: Path | None,
    log_level: str,
    api_port: int | None = None,
    data_dir: Path | None = None,
) -> None:
    """Load the site, then run `entry` until SIGINT/SIGTERM; start-up faults exit 1."""
    setup_logging(log_level)
    site = _site(config, api_port, data_dir)
    try:
        asyncio.run(entry(site))
    except OSError as exc:  # a port taken, a device address that cannot be bound
        log.error("cannot start", extra={"error": str(exc)})
        raise typer.Exit(1) from None


@app.command()
def demo(
    config: ConfigOpt = None,
    api_port: ApiPortOpt = None,
    data_dir: DataDirOpt = None,
    log_level: LogLevelOpt = "INFO",
) -> None:
    """Every simulator, the controller, the API and metrics, in one process on loopback."""
    _start(run_demo, config, log_level, api_port, data_dir)


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="site file (YAML)")],
    api_port: ApiPortOpt = None,
    data_dir: DataDirOpt = None,
    log_level: LogLevelOpt = "INFO",
) -> None:
    """The controller alone, against the devices the site file names."""
    _start(run_controller, config, log_level, api_port, data_dir)


@app.command()
def sim(config: ConfigOpt = None, log_level: LogLevelOpt = "INFO") -> None:
    """The simulated plant alone: one server per device of the site file, on its address."""
    _start(run_simulators, config, log_level)


@app.command("check-config")
def check_config(config: Annotated[Path, typer.Argument(help="site file (YAML)")]) -> None:
    """Validate a site file; print its devices, or each bad field and exit 2."""
    site = _site(config)
    for module in site.modules:
        for d in module.devices:
            typer.echo(f"{module.id:12} {d.id:12} {d.kind:6} {d.host}:{d.port}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
