"""The VEN's Prometheus series, read at scrape time from the last tick's copy of its status.
Without a VEN the families are there, empty (alerts and dashboards name them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.grid.status import VenStatus

GAUGES = (
    ("gridpilot_openadr_reachable", "1 while the VTN answered the last read",
     lambda s, now: 1.0 if s.reachable else 0.0),
    ("gridpilot_openadr_unreachable_seconds", "How long the VTN has failed (0: it answers)",
     lambda s, now: s.out_for_s(now)),
    ("gridpilot_openadr_events_in_force", "VTN events planned or running here",
     lambda s, now: float(s.events_in_force)),
)  # fmt: skip


class OpenADRCollector(Collector):
    def __init__(self, site: str, latest: Callable[[], tuple[VenStatus, float] | None]) -> None:
        self.site, self.latest = site, latest

    def collect(self) -> Iterator[Metric]:
        found = self.latest()
        site = [self.site]
        for name, help_text, value_of in GAUGES:
            gauge = GaugeMetricFamily(name, help_text, labels=["site"])
            if found is not None:
                gauge.add_metric(site, value_of(*found))
            yield gauge
        price = found[0].price_now(found[1]) if found is not None else None
        gauge = GaugeMetricFamily(
            "gridpilot_openadr_price",
            "The price the VTN tells for now, in its currency per its units (recorded only)",
            labels=["site", "currency", "units"],
        )
        if price is not None:
            gauge.add_metric([*site, price.currency or "", price.units or ""], price.value)
        yield gauge
        reports = CounterMetricFamily(
            "gridpilot_openadr_reports", "Reports the VTN accepted", labels=["site"]
        )
        if found is not None:
            reports.add_metric(site, float(found[0].reports_sent))
        yield reports
        status = found[0] if found is not None else None
        for name, help_text, label, counts in (
            ("gridpilot_openadr_errors", "Failed exchanges with the VTN, by kind", "kind",
             status.errors if status else {}),
            ("gridpilot_openadr_refused", "VTN payloads refused (control unchanged), by reason",
             "reason", status.refused if status else {}),
        ):  # fmt: skip
            family = CounterMetricFamily(name, help_text, labels=["site", label])
            for key, count in sorted(counts.items()):
                family.add_metric([*site, key], float(count))
            yield family
