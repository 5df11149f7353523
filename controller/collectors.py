"""Prometheus collectors read at scrape time: driver counters, energy totals, tokens, ratios.

They read immutable values the loop published (the last tick's record, with each driver's
counters as copied at the tick; the energy account's last copy; the ratios' last values), so
a scrape on the API's thread never walks a dict the loop is changing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from controller.energy import WINDOWS_S, EnergyTotals, RollingRatios
from controller.recorder.captures import CaptureKeeper
from controller.recorder.recorder import Recorder
from controller.recorder.triggers import CAUSES
from controller.snapshot import Snapshot
from controller.tokens import TokenMeter
from controller.writer import Writer
from drivers.base import ERROR_KINDS, LATENCY_BUCKETS_S

# A table of families over a set of things (devices, writers): name, type, help, value of one.
Table = tuple[tuple[str, type, str, Callable[[Any], float | None]], ...]


def families(site: str, label: str, table: Table, things: Mapping[str, Any]) -> Iterator[Metric]:
    """One family per row of `table`, one sample per thing (labelled site and `label`) whose
    value is known."""
    for name, family_type, help_text, value_of in table:
        family = family_type(name, help_text, labels=["site", label])
        for key, thing in things.items():
            if (value := value_of(thing)) is not None:
                family.add_metric([site, key], value)
        yield family


class DriverCollector(Collector):
    """Each device's link state, counters and poll-duration histogram, as of the last tick."""

    def __init__(self, site: str, latest: Callable[[], Snapshot | None]) -> None:
        self.site, self.latest = site, latest

    # name, type, help, value of one device (a DeviceSnapshot; None: no sample)
    FAMILIES: Table = (
        ("gridpilot_device_up", GaugeMetricFamily, "1 while the driver is connected",
         lambda d: 1.0 if d.connected else 0.0),
        ("gridpilot_device_polls", CounterMetricFamily, "Completed polls of every point",
         lambda d: d.counters.polls),
        ("gridpilot_device_errors", CounterMetricFamily, "Failed connects, reads and timeouts",
         lambda d: d.counters.errors),
        ("gridpilot_device_retries", CounterMetricFamily,
         "Reads the device answered with an error and that were tried again",
         lambda d: d.counters.retries),
        ("gridpilot_device_frozen", GaugeMetricFamily,
         "1 while the device answers but its own heartbeat stands still",
         lambda d: 1.0 if d.frozen else 0.0),
        ("gridpilot_device_write_errors", CounterMetricFamily, "Failed setpoint writes",
         lambda d: d.counters.write_errors),
    )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        snapshot = self.latest()
        devices = snapshot.devices if snapshot is not None else {}
        yield from families(self.site, "device", self.FAMILIES, devices)
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
        for device_id, device in devices.items():
            c = device.counters
            for kind in ERROR_KINDS:
                by_kind.add_metric([self.site, device_id, kind], c.errors_by_kind.get(kind, 0))
            buckets = [
                (repr(bound), float(n))
                for bound, n in zip(LATENCY_BUCKETS_S, c.latency_bucket_counts, strict=True)
            ]
            buckets.append(("+Inf", float(c.polls)))
            latency.add_metric([self.site, device_id], buckets, c.latency_sum_s)
        yield by_kind
        yield latency


class EnergyCollector(Collector):
    """Energy counters (J since start) and the rolling ratios: PUE and energy per token."""

    def __init__(
        self,
        site: str,
        totals: Callable[[], EnergyTotals],
        ratios: RollingRatios,
        tokens: TokenMeter,
    ) -> None:
        self.site, self.totals, self.ratios, self.tokens = site, totals, ratios, tokens

    def collect(self) -> Iterator[Metric]:
        t, site = self.totals(), [self.site]
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
        latest = self.ratios.latest  # as of the last sample: one immutable mapping
        for window in WINDOWS_S:
            if (value := latest.get(("pue", window))) is not None:
                pue.add_metric([self.site, window], value)
            if (value := latest.get(("erf", window))) is not None:
                erf.add_metric([self.site, window], value)
            rate = latest.get(("tokens_per_joule", window))
            if rate is not None:
                per_joule.add_metric([self.site, window], rate)
                if rate > 0:
                    per_token.add_metric([self.site, window], 1.0 / rate)
        yield from (pue, per_joule, per_token, erf)


class WriterCollector(Collector):
    """The writer threads: what waits for the disk, and the faults they met (each a counter
    of the writer's own, read as it stands)."""

    def __init__(self, site: str, writers: Sequence[Writer]) -> None:
        self.site, self.writers = site, writers

    # name, type, help, value of one writer
    FAMILIES: Table = (
        ("gridpilot_storage_pending_writes", GaugeMetricFamily, "Writes queued for the disk",
         lambda w: w.pending),
        ("gridpilot_storage_failing", GaugeMetricFamily,
         "1 while a storage fault (locked, full, I/O) holds the writes",
         lambda w: 1.0 if w.failing else 0.0),
        ("gridpilot_storage_write_failures", CounterMetricFamily,
         "Write attempts that met a storage fault (retried)", lambda w: w.failures_total),
        ("gridpilot_storage_writes_dropped", CounterMetricFamily, "Writes that failed for a bug",
         lambda w: w.dropped_total),
        ("gridpilot_storage_samples_shed", CounterMetricFamily,
         "Samples not kept: the queue was at its bound while the disk failed",
         lambda w: w.shed_total),
    )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        yield from families(self.site, "writer", self.FAMILIES, {w.name: w for w in self.writers})


class RecorderCollector(Collector):
    """The recorder: rows on disk, the folder's size, captures kept by cause (counters the
    recorder's thread increments; an int read whole)."""

    def __init__(self, site: str, recorder: Recorder, captures: CaptureKeeper | None) -> None:
        self.site, self.recorder, self.captures = site, recorder, captures

    def collect(self) -> Iterator[Metric]:
        rows = CounterMetricFamily(
            "gridpilot_recorder_rows", "Tick rows the recorder wrote to disk", labels=["site"]
        )
        rows.add_metric([self.site], self.recorder.rows_total)
        size = GaugeMetricFamily(
            "gridpilot_recorder_disk_bytes",
            "Bytes of the recorder's files (measured once a minute)",
            labels=["site"],
        )
        size.add_metric([self.site], self.recorder.bytes)
        yield from (rows, size)
        if self.captures is not None:
            made = CounterMetricFamily(
                "gridpilot_captures",
                "Disturbance captures kept, by cause",
                labels=["site", "cause"],
            )
            for cause in CAUSES:
                made.add_metric([self.site, cause], self.captures.made_total[cause])
            yield made


class MvCollector(Collector):
    """The running demand-response events' M&V, as last measured (every few seconds)."""

    def __init__(self, site: str, latest: Callable[[], Mapping[int, Any]]) -> None:
        self.site, self.latest = site, latest

    def collect(self) -> Iterator[Metric]:
        from controller.mv_keeper import totals

        t = totals(self.latest())
        for name, help_text, value in (
            ("gridpilot_dr_events_measured", "Running events being measured (M&V)",
             t["running"]),
            ("gridpilot_dr_asked_reduction_watts",
             "Running events' asked reduction against their baselines, mean so far, added up",
             t["asked_w"]),
            ("gridpilot_dr_delivered_reduction_watts",
             "Running events' delivered reduction against their baselines, mean so far, added up",
             t["delivered_w"]),
        ):  # fmt: skip
            family = GaugeMetricFamily(name, help_text, labels=["site"])
            family.add_metric([self.site], value)
            yield family


class PlannerCollector(Collector):
    """The planner's plans not made (its process raised, died or hung), a counter of its own;
    0 while it is off."""

    def __init__(self, site: str, failures: Callable[[], int]) -> None:
        self.site, self.failures = site, failures

    def collect(self) -> Iterator[Metric]:
        failed = CounterMetricFamily(
            "gridpilot_plan_failures",
            "Plans not made: the planner's process raised, died or hung (it is replaced)",
            labels=["site"],
        )
        failed.add_metric([self.site], self.failures())
        yield failed
