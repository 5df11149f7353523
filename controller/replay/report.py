"""How replay and sizing results look in a terminal (rich)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from controller.replay.run import CHUNK_STEPS, Sizing
from controller.replay.run import Progress as ProgressFn

console = Console()
err_console = Console(stderr=True)

ROWS = (
    ("grid_max_ramp_w_per_s", "largest grid ramp", "W/s", ",.0f"),
    ("band_attenuation_db", "band attenuation 0.1–20 Hz", "dB", ".1f"),
    ("battery_throughput_kwh", "battery throughput", "kWh", ",.2f"),
    ("required_capacity_kwh", "stored energy used (max − min)", "kWh", ",.2f"),
    ("max_battery_w", "largest battery power", "W", ",.0f"),
    ("unserved_kwh", "unserved", "kWh", ",.3f"),
    ("soc_min", "lowest SoC", "", ".3f"),
    ("soc_max", "highest SoC", "", ".3f"),
    ("lp_throughput_kwh", "bound: throughput", "kWh", ",.2f"),
    ("lp_required_capacity_kwh", "bound: stored energy used", "kWh", ",.2f"),
    ("lp_realizable_capacity_kwh", "bound a battery can follow: stored energy", "kWh", ",.2f"),
    ("throughput_ratio", "throughput / bound", "", ".3f"),
    ("capacity_ratio", "stored energy used / bound", "", ".3f"),
    ("realizable_capacity_ratio", "stored energy used / the followable bound", "", ".3f"),
)


@contextlib.contextmanager
def replay_progress(steps: int) -> Iterator[ProgressFn | None]:
    """A progress bar on stderr for traces long enough to take a while; nothing otherwise."""
    if steps <= CHUNK_STEPS:
        yield None
        return
    columns = (
        TextColumn("replay"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} steps"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("replay", total=steps)
        yield lambda done, _total: bar.update(task, completed=done)


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_figures(result: dict[str, Any], trace: Path) -> None:
    # The title is the trace's name and its steps, short enough not to wrap mid-phrase.
    table = Table(
        title=f"replay of {trace.name}\n{result['steps']:,} steps of {result['dt_s']:g} s",
        caption=str(trace),
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("unit")
    for key, label, unit, spec in ROWS:
        table.add_row(label, _fmt(result[key], spec), unit)
    console.print(table)
    if result["bound"] != "solved":
        console.print(f"bound: {result['bound']}")


def print_sizing(s: Sizing, trace: Path, ramp_w_per_s: float) -> None:
    table = Table(title=f"smallest battery for {trace} at {ramp_w_per_s:,.0f} W/s")
    table.add_column("")
    table.add_column("power (W)", justify="right")
    table.add_column("energy swing (kWh)", justify="right")
    table.add_column("nameplate (Wh)", justify="right")
    table.add_row(
        "online controller",
        f"{s.online_battery_w:,.0f}",
        f"{s.online_swing_kwh:,.2f}",
        f"{s.online_battery_wh:,.0f}",
    )
    table.add_row(
        "perfect foresight (LP)", _fmt(s.lp_battery_w, ",.0f"), _fmt(s.lp_swing_kwh, ",.2f"), ""
    )
    table.add_row(
        "perfect foresight, a battery can follow it",
        "",
        _fmt(s.lp_realizable_swing_kwh, ",.2f"),
        "",
    )
    console.print(table)
