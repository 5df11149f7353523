"""Prometheus metrics: units in every name, `site` and `device` labels, one registry per app."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.loop import TickRecord
from controller.site import POWER_POINT
from drivers.base import ERROR_KINDS, DeviceDriver

TICK_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class DriverCollector(Collector):
    """Driver counters read at scrape time, so they are never out of step with the drivers."""

    def __init__(self, site: str, drivers: Mapping[str, DeviceDriver]) -> None:
        self.site, self.drivers = site, drivers

    # name, type, help, value of one driver (None: no sample)
    FAMILIES: tuple[tuple[str, type, str, Callable[[DeviceDriver], float | None]], ...] = (
        (
            "gridpilot_device_up",
            GaugeMetricFamily,
            "1 while the driver is connected",
            lambda d: 1.0 if d.connected else 0.0,
        ),
        (
            "gridpilot_device_polls",
            CounterMetricFamily,
            "Completed polls of every point",
            lambda d: d.counters.polls_total,
        ),
        (
            "gridpilot_device_errors",
            CounterMetricFamily,
            "Failed connects, reads and timeouts",
            lambda d: d.counters.errors_total,
        ),
        (
            "gridpilot_device_retries",
            CounterMetricFamily,
            "Reads the device answered with an error and that were tried again",
            lambda d: d.counters.retries_total,
        ),
        (
            "gridpilot_device_frozen",
            GaugeMetricFamily,
            "1 while the device answers but its own heartbeat stands still",
            lambda d: 1.0 if d.frozen else 0.0,
        ),
        (
            "gridpilot_device_write_errors",
            CounterMetricFamily,
            "Failed setpoint writes",
            lambda d: d.counters.write_errors_total,
        ),
        (
            "gridpilot_device_poll_latency_seconds",
            GaugeMetricFamily,
            "Duration of the last complete poll",
            lambda d: None if math.isnan(d.counters.last_latency_s) else d.counters.last_latency_s,
        ),
    )

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for name, family_type, help_text, value_of in self.FAMILIES:
            family = family_type(name, help_text, labels=["site", "device"])
            for device_id, driver in self.drivers.items():
                value = value_of(driver)
                if value is not None:
                    family.add_metric([self.site, device_id], value)
            yield family
        by_kind = CounterMetricFamily(
            "gridpilot_device_errors_by_kind",
            "Errors by kind: timeout, connection, exception, frozen, mismatch, security, other",
            labels=["site", "device", "kind"],
        )
        for device_id, driver in self.drivers.items():
            for kind in ERROR_KINDS:
                count = driver.counters.errors_by_kind.get(kind, 0)
                by_kind.add_metric([self.site, device_id, kind], count)
        yield by_kind


class Metrics:
    def __init__(self, site: str, drivers: Mapping[str, DeviceDriver]) -> None:
        self.site = site
        self.registry = CollectorRegistry()
        s, sd = ["site"], ["site", "device"]
        gauge = partial(Gauge, registry=self.registry)
        self.grid = gauge("gridpilot_grid_power_watts", "Grid import at the meter (+ = import)", s)
        self.grid_target = gauge("gridpilot_grid_target_power_watts", "Grid draw aimed for", s)
        self.it = gauge("gridpilot_it_power_watts", "IT load (sum of UPS outputs)", s)
        self.cooling = gauge("gridpilot_cooling_power_watts", "Cooling plant electrical power", s)
        self.site_load = gauge("gridpilot_site_load_watts", "Load smoothed: IT + cooling", s)
        self.frequency = gauge("gridpilot_grid_frequency_hertz", "Grid frequency at the meter", s)
        self.unserved = gauge(
            "gridpilot_unserved_power_watts", "Beyond the ramp limit or cap: batteries could not", s
        )
        self.shed = gauge(
            "gridpilot_shed_request_watts", "Load to shed to stay within the ramp limit or cap", s
        )
        self.response = gauge(
            "gridpilot_frequency_response_watts", "Given back for frequency (+ = draw less)", s
        )
        self.battery = gauge("gridpilot_battery_power_watts", "Measured (+ = discharge)", sd)
        self.setpoint = gauge("gridpilot_battery_setpoint_watts", "Commanded (+ = discharge)", sd)
        self.soc = gauge("gridpilot_battery_soc_ratio", "Battery state of charge, 0–1", sd)
        self.degraded = gauge(
            "gridpilot_control_degraded", "1 while data is missing and batteries stand down", s
        )
        self.tick_duration = Histogram(
            "gridpilot_loop_duration_seconds",
            "Work time of one control tick",
            s,
            buckets=TICK_BUCKETS_S,
            registry=self.registry,
        )
        self.tick_lateness = Histogram(
            "gridpilot_loop_lateness_seconds",
            "How late a tick started against its schedule",
            s,
            buckets=TICK_BUCKETS_S,
            registry=self.registry,
        )
        self.overruns = Counter(
            "gridpilot_loop_overruns",
            "Ticks skipped because the loop fell a whole period behind",
            s,
            registry=self.registry,
        )
        self.ticks = Counter("gridpilot_loop_ticks", "Control ticks run", s, registry=self.registry)
        self.last_tick = gauge(
            "gridpilot_loop_last_tick_timestamp_seconds", "Unix time of the last tick", s
        )
        self._overruns_seen = 0
        self.registry.register(DriverCollector(site, drivers))

    def observe(self, rec: TickRecord) -> None:
        site = self.site
        rd = rec.readings
        for gauge, value in (
            (self.grid, rd.grid_w),
            (self.it, rd.it_w),
            (self.cooling, rd.cooling_w),
            (self.site_load, rec.site_load_w),
            (self.frequency, rd.frequency_hz),
        ):
            if value is not None:
                gauge.labels(site).set(value)
        result = rec.result
        self.degraded.labels(site).set(0.0 if result is not None else 1.0)
        if result is not None:
            self.grid_target.labels(site).set(result.grid_target_w)
            self.unserved.labels(site).set(result.unserved_w)
            self.shed.labels(site).set(result.shed_request_w)
            self.response.labels(site).set(result.frequency_response_w)
            for device, w in result.asset_w.items():
                self.setpoint.labels(site, device).set(w)
        for device, soc in rd.soc.items():
            self.soc.labels(site, device).set(soc)
        for dev in rec.snapshot.devices.values():
            if dev.kind in POWER_POINT and (w := dev.value(POWER_POINT[dev.kind])) is not None:
                self.battery.labels(site, dev.id).set(w)
        self.tick_duration.labels(site).observe(rec.duration_s)
        self.tick_lateness.labels(site).observe(max(rec.lateness_s, 0.0))
        self.overruns.labels(site).inc(rec.overruns_total - self._overruns_seen)
        self._overruns_seen = rec.overruns_total
        self.ticks.labels(site).inc()
        self.last_tick.labels(site).set(rec.wall_time)
