"""How the compliance report looks in a terminal (rich): each check, pass or fail."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ratio":
        return f"{value:.3f}"
    return f"{value:,.4g} {unit}" if abs(value) < 1e4 else f"{value:,.0f} {unit}"


def print_report(report: Mapping[str, Any]) -> None:
    span = report["range"]
    table = Table(
        title=f"{report['site']}: {span['rows']:,} rows, {span['duration_s']:,.0f} s "
        f"(profile {report['profile']['name']})",
    )
    for name, justify in (("check", "left"), ("limit", "right"), ("measured", "right"),
                          ("held", "right"), ("result", "left")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for c in report["checks"]:
        colour = {"pass": "green", "fail": "red"}.get(c["result"], "yellow")
        held = c.get("held_ratio")
        table.add_row(
            c["name"],
            _num(c.get("limit"), c.get("unit", "")),
            _num(c.get("measured"), c.get("unit", "")),
            "" if held is None else f"{held:.1%}",
            f"[{colour}]{c['result']}[/{colour}]",
        )
    console.print(table)
    battery = report["battery"]
    console.print(
        f"battery: {battery['throughput_kwh']:,.2f} kWh through, "
        f"{battery['equivalent_full_cycles']:.3f} cycles, "
        f"unserved {battery['unserved_kwh']:.3f} kWh"
    )
    console.print(f"result: {report['result']}")
