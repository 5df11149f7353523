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
from dataclasses import dataclass

from controller.config import SiteConfig
from controller.dispatch import DispatchResult, dispatch, initial_state, params_vector
from controller.site import Command, SiteReadings, commands_for, dispatch_inputs, read_site
from controller.snapshot import Snapshot, take_snapshot
from drivers.base import DeviceDriver, DeviceIOError

log = logging.getLogger("gridpilot.loop")
WRITE_BUDGET = 0.8  # share of the tick period that setpoint writes may take


@dataclass(frozen=True)
class TickRecord:
    seq: int
    wall_time: float
    monotonic: float
    period_s: float
    snapshot: Snapshot
    readings: SiteReadings
    site_load_w: float | None
    result: DispatchResult | None  # None: data missing, every asset stood down
    mode: str  # "auto" or "degraded"
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
    ) -> None:
        self.site = site
        self.drivers = drivers
        self.publish = publish
        self.configs = {d.id: d for d in site.devices}
        self.params = params_vector(site.dispatch)
        self.state = initial_state()
        self.seq = 0
        self.overruns = 0
        self._cooling_hold_w = 0.0  # last good cooling power: the CDU may report slowly
        self._last_write_errors: set[str] = set()

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
        result = None
        inputs = (
            None if site_load is None else dispatch_inputs(snapshot, site_load, self.site.dispatch)
        )
        if inputs is not None:
            self.state, result = dispatch(inputs, self.params, self.state, period)
        else:
            # Start again from the measured load when data returns: no jump on the grid.
            self.state = initial_state()
        write_errors = await self._write(
            commands_for(snapshot, result, self.seq), started + WRITE_BUDGET * period
        )
        record = TickRecord(
            seq=self.seq,
            wall_time=snapshot.wall_time,
            monotonic=started,
            period_s=period,
            snapshot=snapshot,
            readings=readings,
            site_load_w=site_load,
            result=result,
            mode="auto" if result is not None else "degraded",
            duration_s=time.monotonic() - started,
            lateness_s=lateness,
            overruns_total=self.overruns,
            write_errors=write_errors,
        )
        self.publish(record)
        return record

    async def _write(self, commands: list[Command], deadline: float) -> tuple[str, ...]:
        """Each device's commands in order, devices in parallel, until `deadline` (monotonic):
        a write still unanswered then is abandoned, so one slow device cannot stall the loop.
        Failures are reported, not raised."""
        by_device: dict[str, list[Command]] = {}
        for c in commands:
            by_device.setdefault(c.device, []).append(c)

        async def write_device(cmds: list[Command]) -> None:
            done = 0
            try:
                for c in cmds:
                    await self.drivers[c.device].write(c.point, c.value)
                    done += 1
            except asyncio.CancelledError:
                pending = ", ".join(f"{c.point}={c.value:g}" for c in cmds[done:])
                raise DeviceIOError(
                    f"{cmds[0].device}: {pending} not acknowledged within the tick"
                ) from None

        tasks = [asyncio.create_task(write_device(cmds)) for cmds in by_device.values()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0.0))
            for task in late:
                task.cancel()
            await asyncio.wait(tasks)
        results = [t.exception() for t in tasks]
        errors = tuple(str(r) for r in results if isinstance(r, BaseException))
        for e in set(errors) - self._last_write_errors:  # report each fault once, not per tick
            log.warning("write failed", extra={"seq": self.seq, "error": e})
        self._last_write_errors = set(errors)
        return errors
