"""The control loop: the one place where drivers, the dispatch core and publishing meet.

Each tick: freeze a snapshot of the drivers' latest values, take the operators' settings in
force (an in-memory value: the tick never waits on disk), let the pure `decide` function
decide, hand its commands to the drivers, and the whole record to the publishers.
Ticks run on an absolute schedule; a tick that starts a whole period late is an overrun and
the ticks it swallowed are skipped, not bunched.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from controller.config import SiteConfig
from controller.decide import ControlState, cooling_config, decide
from controller.planning import Planner
from controller.plans import plan_w_at
from controller.record import InForce, TickRecord
from controller.setpoints import dispatch_config, initial_setpoints
from controller.site import Command, read_site
from controller.snapshot import take_snapshot
from drivers.base import DeviceDriver, DeviceIOError

if TYPE_CHECKING:
    from controller.grid.status import VenStatus
    from controller.ha.lease import Leadership

log = logging.getLogger("gridpilot.loop")
# The event loop's timers wake up to a millisecond late (epoll counts whole ms) and a wait
# costs a few tenths: the loop wakes this early and yields to the other tasks until the tick.
WAKE_EARLY_S = 0.002
MIN_SWITCH_S = 0.0005  # shorter, threads would spend more time handing the GIL than running


class SettingsSource(Protocol):
    """Where a tick gets the operators' settings (`Operations`): at once, from memory."""

    def in_force(self, now_s: float) -> InForce: ...


class SiteDefaults:
    """The site file's settings, for a loop that no operator drives (tests, benchmarks)."""

    def __init__(self, site: SiteConfig) -> None:
        setpoints = initial_setpoints(site)
        self._force = InForce("auto", dispatch_config(site, setpoints), setpoints, 0.0, ())

    def in_force(self, now_s: float) -> InForce:
        return self._force


class ControlLoop:
    def __init__(
        self,
        site: SiteConfig,
        drivers: Mapping[str, DeviceDriver],
        publish: Callable[[TickRecord], None],
        operations: SettingsSource | None = None,
        leadership: Callable[[], Leadership] | None = None,
        grid_link: Callable[[], VenStatus] | None = None,
        planner: Planner | None = None,
    ) -> None:
        self.site = site
        self.settings = operations or SiteDefaults(site)
        self.drivers = drivers
        self.publish = publish
        self.leadership = leadership  # HA: this node's role now (None: HA off, always leads)
        self.grid_link = grid_link  # the VEN's newest status, copied into each record
        self.planner = planner  # plans off the tick's path; a tick reads its newest plan
        self.configs = {d.id: d for d in site.devices}
        self.control = ControlState()
        self.cooling_cfg = cooling_config(site.cooling)
        self.seq = 0
        self.overruns = 0
        self._write_faults: set[str] = set()  # devices whose writes are failing
        self._last_tick = 0.0
        self._token: int | None = None  # HA: the fencing token of this tick (logged with control)

    async def run(self, stop: asyncio.Event) -> None:
        period = self.site.loop_period_s
        # A thread of this process (the store's writers, the replica's, the planner's pickling)
        # keeps the GIL up to the switch interval (5 ms by default) before the tick's wake-up
        # gets it: at most a twentieth of the period, so no tick is that late for it.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(max(MIN_SWITCH_S, min(switch, period / 20.0)))
        try:
            await self._ticks(stop, period)
        finally:
            sys.setswitchinterval(switch)

    async def _ticks(self, stop: asyncio.Event, period: float) -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now < next_at - WAKE_EARLY_S:
                try:
                    await asyncio.wait_for(stop.wait(), next_at - WAKE_EARLY_S - now)
                    break
                except TimeoutError:
                    pass
            while time.monotonic() < next_at and not stop.is_set():
                await asyncio.sleep(0)  # other tasks still run; the tick starts on time
            if stop.is_set():
                break
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
                log.exception("tick failed", extra=self._context())

    async def tick(self, started: float, lateness: float) -> TickRecord:
        self.seq += 1
        period = self.site.loop_period_s
        snapshot = take_snapshot(self.drivers, self.configs, started, time.time())
        readings = read_site(snapshot.assets)
        force = self.settings.in_force(snapshot.wall_time)
        lead = self.leadership() if self.leadership is not None else None
        # The drivers ask the fence again before each write goes on the wire.
        leading = lead is None or lead.may_write(time.monotonic())
        self._token = lead.token if lead is not None else None
        plan = self.planner.plan if self.planner is not None else None
        self.control, decision = decide(
            self.control,
            snapshot,
            readings,
            force,
            self.cooling_cfg,
            period,
            self.seq,
            leading,
            plan_w_at(plan, snapshot.wall_time),
        )
        write_errors = self._submit(decision.commands, self._last_tick)
        self._last_tick = started
        record = TickRecord(
            seq=self.seq,
            wall_time=snapshot.wall_time,
            monotonic=started,
            period_s=period,
            snapshot=snapshot,
            readings=readings,
            decision=decision,
            in_force=force,
            duration_s=time.monotonic() - started,
            lateness_s=lateness,
            overruns_total=self.overruns,
            write_errors=write_errors,
            leadership=lead,
            grid_link=self.grid_link() if self.grid_link is not None else None,
            plan=plan,
        )
        self.publish(record)
        if self.planner is not None:
            self.planner.observe(record, self.control.core)
        return record

    def _submit(self, commands: tuple[Command, ...], since: float) -> tuple[str, ...]:
        """Hand each command to its driver, as the point its map binds to the role; the
        driver writes it at once on its own task. Returns what was refused now and what
        failed on the wire since the previous tick."""
        faults: dict[str, str] = {}  # device → its first write fault this tick
        for c in commands:
            driver = self.drivers[c.device]
            try:
                driver.submit(driver.map.role_point(c.role).name, c.value)
            except DeviceIOError as exc:
                faults.setdefault(c.device, str(exc))
        for device, d in self.drivers.items():
            if (error := d.counters.last_write_error) and d.counters.last_write_error_at >= since:
                faults.setdefault(device, error)
        # One line when a device's writes start failing and one when they work again, not one
        # a tick (the values in the messages change every tick).
        for device in faults.keys() - self._write_faults:
            log.warning("write failed", extra={**self._context(), "error": faults[device]})
        for device in self._write_faults - faults.keys():
            log.info("writes recovered", extra={**self._context(), "device": device})
        self._write_faults = set(faults)
        return tuple(faults.values())

    def _context(self) -> dict[str, object]:
        """What every log line about control carries: the tick, and the fencing token."""
        return {"seq": self.seq} if self._token is None else {"seq": self.seq, "token": self._token}
