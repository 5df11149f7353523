"""Prometheus collectors read at scrape time: driver counters, energy totals, tokens, ratios.

Reading at scrape time keeps counters in step with their owners (a driver, the energy
account, the token meter) without copying them every tick.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from controller.energy import WINDOWS_S, EnergyTotals, RollingRatios
from controller.tokens import TokenMeter
from drivers.base import ERROR_KINDS, LATENCY_BUCKETS_S, DeviceDriver

DriverValue = Callable[[DeviceDriver], float | None]


class DriverCollector(Collector):
    """Each driver's link state, counters and poll-duration histogram."""

    def __init__(self, site: str, drivers: Mapping[str, DeviceDriver]) -> None:
        self.site, self.drivers = site, drivers

    # name, type, help, value of one driver (None: no sample)
    FAMILIES: tuple[tuple[str, type, str, DriverValue], ...] = (
        ("gridpilot_device_up", GaugeMetricFamily, "1 while the driver is connected",
         lambda d: 1.0 if d.connected else 0.0),
        ("gridpilot_device_polls", CounterMetricFamily, "Completed polls of every point",
         lambda d: d.counters.polls_total),
        ("gridpilot_device_errors", CounterMetricFamily, "Failed connects, reads and timeouts",
         lambda d: d.counters.errors_total),
        ("gridpilot_device_retries", CounterMetricFamily,
         "Reads the device answered with an error and that were tried again",
         lambda d: d.counters.retries_total),
        ("gridpilot_device_frozen", GaugeMetricFamily,
         "1 while the device answers but its own heartbeat stands still",
         lambda d: 1.0 if d.frozen else 0.0),
        ("gridpilot_device_write_errors", CounterMetricFamily, "Failed setpoint writes",
         lambda d: d.counters.write_errors_total),
    )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        for name, family_type, help_text, value_of in self.FAMILIES:
            family = family_type(name, help_text, labels=["site", "device"])
            for device_id, driver in self.drivers.items():
                value = value_of(driver)
                if value is not None:
                    family.add_metric([self.site, device_id], value)
            yield family
        by_kind = CounterMetricFamily(
            "gridpilot_device_errors_by_kind",
            "Errors by kind: " + ", ".join(ERROR_KINDS),
            labels=["site", "device", "kind"],
        )
        latency = HistogramMetricFamily(
            "gridpilot_device_poll_duration_seconds",
            "Time to poll every point of the device once",
            labels=["site", "device"],
        )
        for device_id, driver in self.drivers.items():
            c = driver.counters
            for kind in ERROR_KINDS:
                by_kind.add_metric([self.site, device_id, kind], c.errors_by_kind.get(kind, 0))
            buckets = [
                (repr(bound), float(n))
                for bound, n in zip(LATENCY_BUCKETS_S, c.latency_bucket_counts, strict=True)
            ]
            buckets.append(("+Inf", float(c.polls_total)))
            latency.add_metric([self.site, device_id], buckets, c.latency_sum_s)
        yield by_kind
        yield latency


class EnergyCollector(Collector):
    """Energy counters (J since start) and the rolling ratios: PUE and energy per token."""

    def __init__(
        self, site: str, totals: EnergyTotals, ratios: RollingRatios, tokens: TokenMeter
    ) -> None:
        self.site, self.totals, self.ratios, self.tokens = site, totals, ratios, tokens

    def collect(self) -> Iterator[Metric]:
        t, site = self.totals, [self.site]
        for name, help_text, value in (
            (
                "gridpilot_grid_import_energy_joules",
                "Energy imported from the grid",
                t.grid_import_j,
            ),
            ("gridpilot_it_energy_joules", "Energy the IT load drew", t.it_j),
            ("gridpilot_cooling_energy_joules", "Energy the cooling plant drew", t.cooling_j),
            ("gridpilot_facility_energy_joules", "IT and cooling: the site load", t.facility_j),
            (
                "gridpilot_recovered_heat_energy_joules",
                "Heat delivered to the consumer",
                t.reused_heat_j,
            ),
        ):
            family = CounterMetricFamily(name, help_text, labels=["site"])
            family.add_metric(site, value)
            yield family
        for name, help_text, per_device in (
            ("gridpilot_battery_charge_energy_joules", "Energy into each battery asset",
             t.battery_charge_j),
            ("gridpilot_battery_discharge_energy_joules", "Energy out of each battery asset",
             t.battery_discharge_j),
        ):  # fmt: skip
            family = CounterMetricFamily(name, help_text, labels=["site", "device"])
            for device, joules in sorted(per_device.items()):
                family.add_metric([self.site, device], joules)
            yield family
        tokens = CounterMetricFamily(
            "gridpilot_tokens_generated", "Tokens the inference servers generated", labels=["site"]
        )
        tokens.add_metric(site, self.tokens.total())
        yield tokens
        yield from self._sources()
        yield from self._ratios()

    def _sources(self) -> Iterator[Metric]:
        labels = ["site", "source"]
        up = GaugeMetricFamily(
            "gridpilot_token_source_up", "1 while the endpoint answers", labels=labels
        )
        errors = CounterMetricFamily(
            "gridpilot_token_source_errors", "Failed reads of the endpoint", labels=labels
        )
        resets = CounterMetricFamily(
            "gridpilot_token_source_resets", "Counter resets seen (server restarts)", labels=labels
        )
        for s in self.tokens.sources:
            up.add_metric([self.site, s.id], 1.0 if s.up else 0.0)
            errors.add_metric([self.site, s.id], s.errors_total)
            resets.add_metric([self.site, s.id], s.count.resets)
        yield from (up, errors, resets)

    def _ratios(self) -> Iterator[Metric]:
        labels = ["site", "window"]
        pue = GaugeMetricFamily(
            "gridpilot_pue_ratio", "Facility energy over IT energy, rolling", labels=labels
        )
        per_joule = GaugeMetricFamily(
            "gridpilot_token_energy_tokens_per_joule",
            "Tokens generated per joule of facility energy, rolling",
            labels=labels,
        )
        per_token = GaugeMetricFamily(
            "gridpilot_energy_per_token_joules",
            "Joules of facility energy per token generated, rolling",
            labels=labels,
        )
        erf = GaugeMetricFamily(
            "gridpilot_erf_ratio",
            "Energy reuse factor: heat reused over facility energy",
            labels=labels,
        )
        for window in WINDOWS_S:
            if (value := self.ratios.pue(window)) is not None:
                pue.add_metric([self.site, window], value)
            if (value := self.ratios.erf(window)) is not None:
                erf.add_metric([self.site, window], value)
            rate = self.ratios.tokens_per_joule(window)
            if rate is not None:
                per_joule.add_metric([self.site, window], rate)
                if rate > 0:
                    per_token.add_metric([self.site, window], 1.0 / rate)
        yield from (pue, per_joule, per_token, erf)
