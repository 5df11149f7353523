"""The control loop: the one place where drivers, the dispatch core and publishing meet.

Each tick: freeze a snapshot of the drivers' latest values, turn it into the core's inputs,
run the core, write setpoints and heartbeats, and hand the whole record to the publishers.
Ticks run on an absolute schedule; a tick that starts a whole period late is an overrun and
the ticks it swallowed are skipped, not bunched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from controller.config import DispatchConfig, SiteConfig
from controller.cooling import (
    CoolingCommand,
    CoolingConfig,
    CoolingState,
    cooling_step,
    reuse_target_c,
)
from controller.dispatch import (
    DispatchInputs,
    DispatchResult,
    bank_of,
    dispatch,
    hold,
    initial_state,
    resume_state,
    toward_zero,
)
from controller.operations import InForce, Operations
from controller.site import (
    PUMP_SETPOINT,
    REUSE_MIN_TEMPERATURE,
    REUSE_REQUEST,
    SUPPLY_SETPOINT,
    Command,
    SiteReadings,
    cdu_readings,
    commands_for,
    cooling_commands,
    dispatch_inputs,
    read_site,
)
from controller.snapshot import Snapshot, take_snapshot
from drivers.base import DeviceDriver, DeviceIOError

log = logging.getLogger("gridpilot.loop")


@dataclass(frozen=True)
class TickRecord:
    seq: int
    wall_time: float
    monotonic: float
    period_s: float
    snapshot: Snapshot
    readings: SiteReadings
    site_load_w: float | None
    inputs: DispatchInputs | None  # what the core was given (None: data missing)
    result: DispatchResult | None  # None: data missing, every asset stood down
    mode: str  # "auto", "manual", "safe", or "degraded" (data missing: assets stand down)
    in_force: InForce | None  # the operators' settings this tick ran with
    cooling: dict[str, CoolingCommand]  # per CDU: supply setpoint and pump speed sent
    duration_s: float
    lateness_s: float
    overruns_total: int
    write_errors: tuple[str, ...]


class ControlLoop:
    def __init__(
        self,
        site: SiteConfig,
        drivers: Mapping[str, DeviceDriver],
        publish: Callable[[TickRecord], None],
        operations: Operations | None = None,
    ) -> None:
        self.site = site
        self.operations = operations
        self.drivers = drivers
        self.publish = publish
        self.configs = {d.id: d for d in site.devices}
        self.state = initial_state()
        self.seq = 0
        self.overruns = 0
        self._cooling_hold_w = 0.0  # last good cooling power: the CDU may report slowly
        self._last_write_errors: set[str] = set()
        self._last_tick = 0.0
        # The site's cooling settings are the pure controller's, bar the class: its maximum.
        cooling = site.cooling
        self.cooling_cfg = CoolingConfig(
            max_supply_c=cooling.max_supply_c, **cooling.model_dump(exclude={"water_class"})
        )
        self._cooling_state: dict[str, CoolingState] = {}
        self._mode = "auto"
        self._battery_w = 0.0  # the last tick's total battery power (safe mode ramps it down)

    async def run(self, stop: asyncio.Event) -> None:
        period = self.site.loop_period_s
        next_at = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now < next_at:
                try:
                    await asyncio.wait_for(stop.wait(), next_at - now)
                    break
                except TimeoutError:
                    pass
            started = time.monotonic()
            lateness = started - next_at
            if lateness >= period:
                skipped = int(lateness // period)
                self.overruns += skipped
                next_at += skipped * period
                lateness = started - next_at
            next_at += period
            try:
                await self.tick(started, lateness)
            except Exception:  # a bad tick must not stop the site's control
                log.exception("tick failed", extra={"seq": self.seq})

    async def tick(self, started: float, lateness: float) -> TickRecord:
        self.seq += 1
        period = self.site.loop_period_s
        snapshot = take_snapshot(self.drivers, self.configs, started, time.time())
        readings = read_site(snapshot)
        if readings.cooling_w is not None:
            self._cooling_hold_w = readings.cooling_w
        site_load = None if readings.it_w is None else readings.it_w + self._cooling_hold_w
        force = self.operations.in_force(time.time()) if self.operations else None
        cfg = force.dispatch if force else self.site.dispatch
        mode = force.mode if force else "auto"
        result = None
        inputs = None if site_load is None else dispatch_inputs(snapshot, readings, site_load, cfg)
        if inputs is None:
            # Start again from the measured load when data returns: no jump on the grid.
            self.state = initial_state()
            mode = "degraded"
        elif mode == "auto":
            if self._mode != "auto":  # carry on from where the grid is
                energy = bank_of(inputs.assets).energy_j
                self.state = resume_state(site_load - self._battery_w, energy)
            self.state, result = dispatch(inputs, cfg, self.state, period)
        else:
            target = (
                force.setpoints.manual_battery_w  # type: ignore[union-attr]
                if mode == "manual"
                else toward_zero(self._battery_w, self._ramp(cfg), period)
            )
            result = hold(inputs, cfg, target, period)
        if force is not None and result is not None and force.shed_w > result.shed_request_w:
            result = replace(result, shed_request_w=force.shed_w)
        self._mode = mode
        self._battery_w = result.battery_w if result is not None else 0.0
        commands = commands_for(snapshot, result, self.seq)
        cooling = self._cooling(snapshot, force, period)
        reuse = force.setpoints if force else None
        request = reuse.heat_reuse_request_w if reuse and reuse.heat_reuse_mode == "on" else 0.0
        for device, command in cooling.items():
            values = {
                SUPPLY_SETPOINT: command.supply_setpoint_c,
                PUMP_SETPOINT: command.pump_speed,
                REUSE_REQUEST: request,
            }
            if reuse is not None:
                values[REUSE_MIN_TEMPERATURE] = reuse.heat_reuse_min_temperature_c
            commands += cooling_commands(snapshot, device, values)
        write_errors = self._submit(commands, self._last_tick)
        self._last_tick = started
        record = TickRecord(
            seq=self.seq,
            wall_time=snapshot.wall_time,
            monotonic=started,
            period_s=period,
            snapshot=snapshot,
            readings=readings,
            site_load_w=site_load,
            inputs=inputs,
            result=result,
            mode=mode,
            in_force=force,
            cooling=cooling,
            duration_s=time.monotonic() - started,
            lateness_s=lateness,
            overruns_total=self.overruns,
            write_errors=write_errors,
        )
        self.publish(record)
        return record

    def _cooling(
        self, snapshot: Snapshot, force: InForce | None, period: float
    ) -> dict[str, CoolingCommand]:
        """Each CDU's supply and pump, from its readings (fallback while they are unusable)."""
        target = force.setpoints.supply_temperature_c if force else self.cooling_cfg.target_supply_c
        if force is not None and force.setpoints.heat_reuse_mode == "on":
            target = reuse_target_c(
                self.cooling_cfg, target, force.setpoints.heat_reuse_min_temperature_c
            )
        cfg = replace(self.cooling_cfg, target_supply_c=target)
        out = {}
        for device, (supply, ret, dp) in cdu_readings(snapshot).items():
            state = self._cooling_state.get(device, CoolingState())
            self._cooling_state[device], out[device] = cooling_step(
                state, cfg, supply, ret, period, dp
            )
        return out

    def _ramp(self, cfg: DispatchConfig) -> float:
        """The limit the grid moves by as the battery's power goes to zero."""
        return cfg.ramp_up_w_per_s if self._battery_w >= 0.0 else cfg.ramp_down_w_per_s

    def _submit(self, commands: list[Command], since: float) -> tuple[str, ...]:
        """Hand each command to its driver, which writes it at once on its own task. Returns
        what was refused now and what failed on the wire since the previous tick."""
        refused = []
        for c in commands:
            try:
                self.drivers[c.device].submit(c.point, c.value)
            except DeviceIOError as exc:
                refused.append(str(exc))
        failed = [
            error
            for d in self.drivers.values()
            if (error := d.counters.last_write_error) and d.counters.last_write_error_at >= since
        ]
        errors = tuple(refused + failed)
        for e in set(errors) - self._last_write_errors:  # report each fault once, not per tick
            log.warning("write failed", extra={"seq": self.seq, "error": e})
        self._last_write_errors = set(errors)
        return errors
