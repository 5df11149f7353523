"""Prometheus metrics: units in every name, `site` and `device` labels, one registry per app.

Everything comes from the tick's record: gauges are set from each record; the collectors in
`collectors.py` read, at scrape time, the last record (driver counters as copied at the tick)
and the energy account's last published copy, never the drivers or dicts the loop changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controller.collectors import DriverCollector, EnergyCollector, WriterCollector
from controller.energy import EnergyTotals, RollingRatios, Sample
from controller.grid.metrics import OpenADRCollector
from controller.grid.status import VenStatus
from controller.notices import upcoming
from controller.record import TickRecord
from controller.tokens import TokenMeter
from controller.writer import Writer

if TYPE_CHECKING:
    from controller.plans import Plan

MODES = ("auto", "manual", "safe", "degraded", "standby")  # the control modes a tick reports
HA_ROLES = ("leader", "standby", "unknown")
LATE_FRACTION = 0.1  # a tick that starts later than this share of its period is late
RAMP_SPAN_S = 1.0  # the grid's ramp is measured over this span (the meter averages 200 ms)
# CDU role → (metric, help): the cooling loop as the CDU reports it.
COOLING_ROLES = {
    "supply_c": ("gridpilot_coolant_supply_temperature_celsius", "Supply temperature"),
    "return_c": ("gridpilot_coolant_return_temperature_celsius", "Return temperature"),
    "flow_m3_per_s": ("gridpilot_coolant_flow_cubic_meters_per_second", "Coolant flow"),
    "pump_speed_ratio": ("gridpilot_pump_speed_ratio", "Pump speed, 0–1 of maximum"),
    "pump_power_w": ("gridpilot_pump_power_watts", "Pump electrical power"),
    "heat_load_w": ("gridpilot_coolant_heat_load_watts", "Heat the liquid loop carries away"),
    "pressure_pa": ("gridpilot_coolant_differential_pressure_pascals", "Loop ΔP"),
    "heat_reused_w": ("gridpilot_heat_reuse_delivered_watts", "Heat delivered to the consumer"),
    "reuse_request_w": ("gridpilot_heat_reuse_requested_watts", "Heat the consumer asks"),
    "heat_rejected_w": ("gridpilot_heat_rejected_watts", "Heat given to the dry cooler"),
    "ambient_c": ("gridpilot_ambient_temperature_celsius", "Outdoor air at the cooler"),
}

TICK_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Metrics:
    def __init__(
        self, site: str, tokens: TokenMeter | None = None, writers: Sequence[Writer] = ()
    ) -> None:
        self.site = site
        self.tokens = tokens or TokenMeter([])
        self.latest: TickRecord | None = None  # what the collectors read at scrape time
        self.energy = EnergyTotals()
        self.energy_view = EnergyTotals()  # the account as of the last tick, for scrapes
        self.ratios = RollingRatios()
        self._last_tick: float | None = None
        self._grid_history: deque[tuple[float, float]] = deque(maxlen=64)
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
        self.floor = gauge(
            "gridpilot_battery_floor_ratio",
            "SoC never discharged below: SoC min or the UPS ride-through reserve, 0–1",
            sd,
        )
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
        self.late_ticks = Counter(
            "gridpilot_loop_late_ticks",
            f"Ticks that started more than {LATE_FRACTION:.0%} of a period late",
            s,
            registry=self.registry,
        )
        self.mode = gauge(
            "gridpilot_control_mode", "1 for the mode control is in", ["site", "mode"]
        )
        self.ha_role = gauge(
            "gridpilot_ha_role", "1 for this node's role in the HA pair", ["site", "node", "role"]
        )
        self.ha_token = gauge(
            "gridpilot_ha_fencing_token", "The fencing token this node leads with (absent: none)", s
        )
        self.ha_writing = gauge(
            "gridpilot_ha_writing", "1 while this node may write to the plant (it leads)", s
        )
        self.import_cap = gauge("gridpilot_import_cap_watts", "Import cap in force", s)
        self.notices_pending = gauge("gridpilot_notices_pending", "Workload notices pending", s)
        self.notice_lead = gauge(
            "gridpilot_notice_next_lead_seconds",
            "Until the next workload notice takes effect (absent: none ahead)",
            s,
        )
        self.plan_w = gauge(
            "gridpilot_plan_feed_forward_watts",
            "The planner's feed-forward added to the grid target this tick (0: none, not auto)",
            s,
        )
        self.plan_duration = Histogram(
            "gridpilot_plan_duration_seconds",
            "The planner's time for one plan (in its own process, off the tick's path)",
            s,
            buckets=TICK_BUCKETS_S,
            registry=self.registry,
        )
        self.grid_ramp = gauge(
            "gridpilot_grid_ramp_watts_per_second", f"Grid draw's change over {RAMP_SPAN_S} s", s
        )
        self.ramp_headroom = gauge(
            "gridpilot_grid_ramp_headroom_watts_per_second",
            "Ramp limit minus the grid's ramp in its direction (< 0: limit exceeded)",
            s,
        )
        self.ups_mode = gauge("gridpilot_ups_mode", "UPS mode: 0 normal, 1 battery, 2 bypass", sd)
        self.stale_points = gauge(
            "gridpilot_device_stale_points", "Points too old or invalid to use", sd
        )
        self.cooling_setpoint = gauge(
            "gridpilot_coolant_supply_setpoint_celsius", "Supply setpoint sent to the CDU", sd
        )
        self.pump_command = gauge("gridpilot_pump_speed_command_ratio", "Pump speed sent", sd)
        self.cooling_fallback = gauge(
            "gridpilot_cooling_fallback", "1 while CDU data is unusable: safe pumps, coldest", sd
        )
        self.cooling_roles = {
            role: gauge(name, help_text, sd) for role, (name, help_text) in COOLING_ROLES.items()
        }
        for counter in (self.late_ticks, self.overruns, self.ticks, self.plan_duration):
            counter.labels(site)  # every series from the start: rates over them work at once
        self._overruns_seen = 0
        self._plan_seen: Plan | None = None
        self.registry.register(
            DriverCollector(site, lambda: self.latest.snapshot if self.latest else None)
        )
        self.registry.register(
            EnergyCollector(site, lambda: self.energy_view, self.ratios, self.tokens)
        )
        self.registry.register(WriterCollector(site, writers))
        self.registry.register(OpenADRCollector(site, self._grid_link))

    def _grid_link(self) -> tuple[VenStatus, float] | None:
        rec = self.latest
        return None if rec is None or rec.grid_link is None else (rec.grid_link, rec.wall_time)

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
        for asset in rec.inputs.assets if rec.inputs is not None else ():
            if asset.capacity_j > 0:
                self.floor.labels(site, asset.id).set(asset.floor_j / asset.capacity_j)
        for device, w in rd.battery_asset_w.items():
            self.battery.labels(site, device).set(w)
        self.tick_duration.labels(site).observe(rec.duration_s)
        self.tick_lateness.labels(site).observe(max(rec.lateness_s, 0.0))
        self.overruns.labels(site).inc(rec.overruns_total - self._overruns_seen)
        self._overruns_seen = rec.overruns_total
        self.ticks.labels(site).inc()
        self.last_tick.labels(site).set(rec.wall_time)
        if rec.lateness_s > LATE_FRACTION * rec.period_s:
            self.late_ticks.labels(site).inc()
        for mode in MODES:
            self.mode.labels(site, mode).set(1.0 if rec.mode == mode else 0.0)
        if (lead := rec.leadership) is not None:
            for role in HA_ROLES:
                self.ha_role.labels(site, lead.node, role).set(1.0 if lead.role == role else 0.0)
            self.ha_writing.labels(site).set(1.0 if lead.may_write(rec.monotonic) else 0.0)
            if lead.token is not None:
                self.ha_token.labels(site).set(lead.token)
            else:
                self.ha_token.clear()
        cap = rec.in_force.dispatch.import_cap_w  # the operators' or an event's, if any
        if cap is not None:
            self.import_cap.labels(site).set(cap)
        else:
            self.import_cap.clear()
        self._notices(rec)
        self._plan(rec)
        self._devices(rec)
        for device, command in rec.cooling.items():
            if command is None:
                continue  # waiting for the CDU's first data: nothing sent
            self.cooling_setpoint.labels(site, device).set(command.supply_setpoint_c)
            self.pump_command.labels(site, device).set(command.pump_speed)
            self.cooling_fallback.labels(site, device).set(1.0 if command.fallback else 0.0)
        self._grid_ramp(rec)
        self._account(rec)
        self.latest = rec

    def _notices(self, rec: TickRecord) -> None:
        notices = rec.in_force.notices
        self.notices_pending.labels(self.site).set(len(notices))
        soon = upcoming(notices, rec.wall_time)
        if soon is not None:
            self.notice_lead.labels(self.site).set(soon.at_s - rec.wall_time)
        else:
            self.notice_lead.clear()

    def _plan(self, rec: TickRecord) -> None:
        self.plan_w.labels(self.site).set(rec.decision.plan_w)
        if rec.plan is not None and rec.plan is not self._plan_seen:  # each new plan once
            self._plan_seen = rec.plan
            self.plan_duration.labels(self.site).observe(rec.plan.duration_s)

    def _devices(self, rec: TickRecord) -> None:
        for dev in rec.snapshot.devices.values():
            unusable = sum(1 for p in dev.points.values() if not p.usable)
            self.stale_points.labels(self.site, dev.id).set(unusable)
        assets = rec.snapshot.assets
        for ups in assets.ups_modules:
            if ups.mode is not None:
                self.ups_mode.labels(self.site, ups.id).set(ups.mode)
        for cdu in assets.cdus:
            for role, gauge in self.cooling_roles.items():
                if (value := cdu.readings.get(role)) is not None:
                    gauge.labels(self.site, cdu.id).set(value)

    def _grid_ramp(self, rec: TickRecord) -> None:
        grid = rec.readings.grid_w
        if grid is None:
            return
        history = self._grid_history
        history.append((rec.monotonic, grid))
        while len(history) > 2 and rec.monotonic - history[1][0] >= RAMP_SPAN_S:
            history.popleft()
        then, before = history[0]
        if rec.monotonic - then < 0.5 * RAMP_SPAN_S:
            return
        ramp = (grid - before) / (rec.monotonic - then)
        limits = rec.in_force.dispatch  # what is in force, as operators set it
        limit = limits.ramp_up_w_per_s if ramp >= 0 else limits.ramp_down_w_per_s
        self.grid_ramp.labels(self.site).set(ramp)
        self.ramp_headroom.labels(self.site).set(limit - abs(ramp))

    def _account(self, rec: TickRecord) -> None:
        """Energy since the last tick, at this tick's powers (a gap longer than a few
        periods is not bridged: the powers across it are unknown)."""
        if self._last_tick is not None:
            dt = rec.monotonic - self._last_tick
            if dt <= 5 * rec.period_s:
                rd = rec.readings
                self.energy.add(
                    dt, rd.grid_w, rd.it_w, rd.cooling_w, rd.battery_asset_w, rd.reused_heat_w
                )
        self._last_tick = rec.monotonic
        self.energy_view = self.energy.frozen()
        e = self.energy
        self.ratios.record(
            Sample(rec.monotonic, e.it_j, e.facility_j, self.tokens.total(), e.reused_heat_j)
        )
