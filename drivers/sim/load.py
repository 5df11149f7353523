"""AI-load source: a real GPU power trace, scaled to a site and tiled over time."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import numpy as np


def load_gpu_trace(name_or_path: str) -> tuple[np.ndarray, np.ndarray]:
    """(t_s, gpu_power_w) of a shipped trace (by name) or of a CSV file in the same format."""
    path = Path(name_or_path)
    if path.suffix == ".csv":
        text = path.read_text()
    else:
        text = (resources.files("drivers") / "sim" / "traces" / f"{name_or_path}.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    t = np.array([float(r["t_s"]) for r in rows])
    p = np.array([float(r["gpu_power_w"]) for r in rows])
    return t, p


def training_start_s(name: str) -> float:
    """Where a shipped training trace's steady state begins (its `train_ready` event), else 0."""
    events = resources.files("drivers") / "sim" / "traces" / f"{name}.events.csv"
    if not events.is_file():
        return 0.0
    for row in csv.DictReader(events.read_text().splitlines()):
        if row["kind"] == "train_ready":
            return float(row["t_start_s"])
    return 0.0


class TraceLoad:
    """site IT load = base_w + Σ over racks of its GPUs × gpu_power_w(t + its offset),
    sample-and-hold, tiled from the end of start-up. Each rack runs the trace offset by up to
    `jitter_s` (seeded): real racks are not in lockstep to the millisecond, but the swing stays."""

    def __init__(
        self, trace: str, gpus: int, base_w: float, racks: int = 1, jitter_s: float = 0.0
    ) -> None:
        t, p = load_gpu_trace(trace)
        keep = t >= training_start_s(trace)
        self._t = t[keep] - t[keep][0]
        self._p = p[keep]
        self._step_s = float(np.median(np.diff(self._t)))
        self._period_s = float(self._t[-1]) + self._step_s
        self.gpus, self.base_w = gpus, base_w
        self._offsets = (
            np.random.default_rng(11).uniform(0.0, jitter_s, racks) if jitter_s else np.zeros(1)
        )

    @property
    def period_s(self) -> float:
        return self._period_s

    def it_power_w(self, t_s: float) -> float:
        phase = (t_s + self._offsets) % self._period_s
        i = np.maximum(np.searchsorted(self._t, phase, side="right") - 1, 0)
        return self.base_w + self.gpus * float(self._p[i].mean())
