"""What the VEN reports to the VTN for one of its events over one report interval: the energy
the site drew (the meter's own register), its mean draw, the baseline, what was not drawn
against it, and whether the site is ready. Pure figures, then the library's report model.

On the wire in the units OpenADR uses (kW, kWh), named in the report's payload descriptors;
everywhere else in gridpilot in W and J.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

J_PER_KWH = 3.6e6
MIN_REPORT_S = 5.0  # a program asking more often is answered this often


def report_period_s(event: Any, default_s: float) -> float:
    """How often an event asks to be reported on (its first report descriptor): every
    `frequency` intervals (-1: as `numIntervals`; -1 again: once, at its end: infinity). No
    descriptor, or intervals with no duration: the site's `report_s`."""
    descriptors = event.report_descriptors or ()
    period = event.interval_period or next(
        (i.interval_period for i in event.intervals if i.interval_period is not None), None
    )
    duration_s = period.duration.total_seconds() if period is not None else 0.0
    if not descriptors or duration_s <= 0.0:
        return default_s
    d = descriptors[0]
    every = d.frequency if d.frequency > 0 else d.num_intervals
    return math.inf if every <= 0 else max(MIN_REPORT_S, every * duration_s)


@dataclass(frozen=True)
class ReportFigures:
    program_id: str
    event_id: str  # the VTN's
    start_s: float
    end_s: float
    usage_j: float  # drawn from the grid in the interval, by the meter's register
    baseline_w: float | None  # what the site would have drawn (M&V), None: not known
    ready: bool  # control in auto and every device it needs answering

    @property
    def demand_w(self) -> float:
        return self.usage_j / (self.end_s - self.start_s)

    @property
    def delta_j(self) -> float | None:
        """Usage against the baseline over the interval (negative: drawn less), J."""
        if self.baseline_w is None:
            return None
        return self.usage_j - self.baseline_w * (self.end_s - self.start_s)

    def payloads(self) -> list[tuple[str, str | None, float | str]]:
        """(payload type, units, value) as reported."""
        rows: list[tuple[str, str | None, float | str]] = [
            ("USAGE", "KWH", self.usage_j / J_PER_KWH),
            ("DEMAND", "KW", self.demand_w / 1e3),
        ]
        if self.baseline_w is not None and (delta := self.delta_j) is not None:
            rows += [("BASELINE", "KW", self.baseline_w / 1e3)]
            rows += [("DELTA_USAGE", "KWH", delta / J_PER_KWH)]
        rows.append(("OPERATING_STATE", None, "NORMAL" if self.ready else "ERROR"))
        return rows


def report_model(models: Any, f: ReportFigures, client_name: str, resource: str) -> Any:
    """The library's `NewReport` (3.0.1 or 3.1.0, from `models`: its report modules)."""
    from openadr3_client._models.common.interval import Interval
    from openadr3_client._models.common.interval_period import IntervalPeriod

    report, payload, descriptor = models.report, models.payload, models.descriptor
    rows = f.payloads()
    period = IntervalPeriod(
        start=datetime.fromtimestamp(f.start_s, UTC),
        duration=timedelta(seconds=f.end_s - f.start_s),
    )
    values = tuple(payload.ReportPayload(type=kind, values=(value,)) for kind, _, value in rows)
    # The library types a report's descriptors as event payload descriptors (3.0.1 and 3.1.0).
    descriptors = tuple(
        descriptor.EventPayloadDescriptor(payload_type=kind, units=units)
        for kind, units, _ in rows
        if units is not None
    )
    return report.NewReport(
        program_id=f.program_id,
        event_id=f.event_id,
        client_name=client_name,
        report_name=f"gridpilot {f.event_id} {period.start.isoformat()}",
        payload_descriptors=descriptors,
        resources=(
            report.ReportResource(
                resource_name=resource,
                interval_period=period,
                intervals=(Interval(id=0, payloads=values),),
            ),
        ),
    )
