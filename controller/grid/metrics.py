"""The VEN's Prometheus series, read at scrape time from the last tick's copy of its status."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.grid.status import VenStatus


class OpenADRCollector(Collector):
    def __init__(self, site: str, latest: Callable[[], tuple[VenStatus, float] | None]) -> None:
        self.site, self.latest = site, latest

    def collect(self) -> Iterator[Metric]:
        found = self.latest()
        if found is None:
            return
        status, now_s = found
        site = [self.site]
        for name, help_text, value in (
            ("gridpilot_openadr_reachable", "1 while the VTN answered the last read",
             1.0 if status.reachable else 0.0),
            ("gridpilot_openadr_unreachable_seconds", "How long the VTN has failed (0: it answers)",
             status.out_for_s(now_s)),
            ("gridpilot_openadr_events_in_force", "VTN events planned or running here",
             float(status.events_in_force)),
        ):  # fmt: skip
            gauge = GaugeMetricFamily(name, help_text, labels=["site"])
            gauge.add_metric(site, value)
            yield gauge
        price = status.price_now(now_s)
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
        reports.add_metric(site, float(status.reports_sent))
        yield reports
        for name, help_text, label, counts in (
            ("gridpilot_openadr_errors", "Failed exchanges with the VTN, by kind", "kind",
             status.errors),
            ("gridpilot_openadr_refused", "VTN payloads refused (control unchanged), by reason",
             "reason", status.refused),
        ):  # fmt: skip
            family = CounterMetricFamily(name, help_text, labels=["site", label])
            for key, count in sorted(counts.items()):
                family.add_metric([*site, key], float(count))
            yield family
