"""Battery use over the range: throughput, equivalent full cycles, SoC range per asset and the
energy the battery could not cover, streamed. Each tick counts for the loop's period, as the
replay counts its steps (a missed tick counts for nothing)."""

from __future__ import annotations

from typing import Any

import numpy as np

from controller.replay.figures import J_PER_KWH
from controller.report.rows import Rows

SOC_SUFFIX = ".soc"


class BatteryFigures:
    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.abs_battery_w_sum = 0.0  # Σ|battery_w|, W (times the period: J)
        self.cycles = 0.0
        self.unserved_w_sum = 0.0
        self.max_battery_w = 0.0
        self.soc: dict[str, tuple[float, float]] = {}  # asset → (lowest, highest)

    def add(self, rows: Rows) -> None:
        power = np.abs(rows.get("battery_w"))
        self.abs_battery_w_sum += float(np.nansum(power))
        if np.isfinite(power).any():
            self.max_battery_w = max(self.max_battery_w, float(np.nanmax(power)))
        # A full cycle is the capacity out and back in; each tick against that tick's capacity
        # (an asset lost midway shrinks it).
        capacity_j = rows.get("capacity_wh") * 3600.0
        use = np.isfinite(power) & (capacity_j > 0)
        self.cycles += float(np.sum(power[use] * self.period_s / (2.0 * capacity_j[use])))
        self.unserved_w_sum += float(np.nansum(rows.get("unserved_w")))
        for column in rows.names_ending(SOC_SUFFIX):
            soc = rows.get(column)
            if np.isfinite(soc).any():
                asset = column.removesuffix(SOC_SUFFIX)
                lo, hi = self.soc.get(asset, (np.inf, -np.inf))
                self.soc[asset] = (min(lo, float(np.nanmin(soc))), max(hi, float(np.nanmax(soc))))

    def result(self) -> dict[str, Any]:
        return {
            "throughput_kwh": self.abs_battery_w_sum * self.period_s / J_PER_KWH,
            "equivalent_full_cycles": self.cycles,
            "max_battery_w": self.max_battery_w,
            "unserved_kwh": self.unserved_w_sum * self.period_s / J_PER_KWH,
            "soc": {
                a: {"min_ratio": lo, "max_ratio": hi} for a, (lo, hi) in sorted(self.soc.items())
            },
        }
