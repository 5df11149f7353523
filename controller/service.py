"""The controller process: drivers, control loop and store, with the API's process beside it,
started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

from fastapi import FastAPI

from controller import dbfile
from controller.alarms import AlarmBook
from controller.apiproc import ApiProcess, ApiSpec
from controller.bridge import Bridge
from controller.collectors import MvCollector, PlannerCollector, RecorderCollector
from controller.config import BATTERY_KINDS, DeviceConfig, SiteConfig
from controller.dbfile import DB_FILE
from controller.dispatch import warm_up
from controller.grid.ven import Ven
from controller.ha.node import HaNode
from controller.loop import ControlLoop
from controller.metrics import Metrics
from controller.mv_keeper import MvKeeper
from controller.operations import Operations
from controller.opsdb import OpsDB
from controller.planning import Planner
from controller.publish import Publisher
from controller.recorder.captures import CAPTURES_DIR, CaptureKeeper
from controller.recorder.reader import RECORDER_DIR, site_meta
from controller.recorder.recorder import Recorder
from controller.sitefile import device_maps
from controller.state import SiteState
from controller.store import Store
from controller.tokens import TokenMeter, TokenSource
from controller.writer import Writer
from drivers.base import DeviceDriver, DriverSettings
from drivers.certs import api_certificate
from drivers.devicemap import DeviceMap
from drivers.maploader import load_map
from drivers.modbus_client import ModbusDriver
from drivers.opcua_client import OpcUaDriver
from drivers.security import LinkSecurity

log = logging.getLogger("gridpilot")
HA_STOP_S = 5.0  # at shutdown, for the HA node's tasks and then for giving its lease back


def make_driver(device: DeviceConfig, devmap: DeviceMap | None = None) -> DeviceDriver:
    """The device's driver, on its map (as checked by `device_maps`, or loaded here)."""
    devmap = devmap or load_map(device.map_name)
    settings = DriverSettings(
        poll_period_s=device.poll_period_s,
        timeout_s=device.timeout_s,
        backoff_max_s=device.backoff_max_s,
        retries=device.retries,
        min_gap_s=device.min_gap_s,
    )
    security = None
    if (sec := device.security) is not None:
        security = LinkSecurity(
            sec.certificate,
            sec.private_key,
            peer_certificate=sec.peer_certificate,
            peer_ca=tuple(sec.peer_ca),
            username=sec.username,
            password=sec.password_text(),
        )
    if devmap.protocol == "modbus":
        return ModbusDriver(
            device.id, devmap, settings, device.host, device.port, device.unit_id, security
        )
    return OpcUaDriver(
        device.id,
        devmap,
        settings,
        device.host,
        device.port,
        security,
        subscribe=device.opcua_mode == "subscribe",
    )


def make_recorder(site: SiteConfig) -> Recorder | None:
    """The site's recorder under `data_dir/recorder` (none when the site file turns it off)."""
    if not site.recorder.enabled:
        return None
    assets = [dev.id for dev in site.devices_of(*BATTERY_KINDS)]
    meta = site_meta(site.name, site.loop_period_s, site.dispatch, assets)
    return Recorder(site.data_dir / RECORDER_DIR, site.recorder, meta)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


class Controller:
    def __init__(self, site: SiteConfig) -> None:
        warm_up()  # compile (or load from cache) before the first tick, not during it
        self.site = site
        self.db_path = site.data_dir / DB_FILE
        self._backup_idle = threading.Lock()
        self.backup_failures_total = 0
        maps = device_maps(site)  # checked: each device's kind and the roles it provides
        self.db = OpsDB(self.db_path, site.limits)
        self._run_lock = dbfile.hold_run_lock(self.db_path)  # no restore under a running one
        # The operators' side of the file is written on its own thread: a tick hands its
        # alarms, event edges and reverts over and goes on, whatever the disk does.
        self.ops_writer = Writer("operations")
        self.operations = Operations(site, self.db, self.ops_writer)
        self.drivers = {d.id: make_driver(d, maps[d.id]) for d in site.devices}
        # An HA pair: only the leader writes (the loop and, before each write, every driver
        # ask); without `ha`, this controller always writes.
        self.ha = HaNode(site.ha, site.name, self.db, self.operations) if site.ha.enabled else None
        if self.ha is None:
            self.db.set_journalling(False)  # a file that once ran in a pair: no journal now
        else:
            for driver in self.drivers.values():
                driver.may_write = self.ha.may_write
        self.store = Store(site.data_dir / DB_FILE)
        self.recorder = make_recorder(site)
        self.captures = None
        if self.recorder is not None:
            self.captures = CaptureKeeper(
                site.data_dir / CAPTURES_DIR,
                self.recorder,
                site.recorder.captures,
                site.name,
                site.dispatch.nominal_frequency_hz,
            )
        writers = (self.ops_writer, self.store.writer)
        if self.recorder is not None:
            writers += (self.recorder.writer,)
        self.alarms = AlarmBook(self.db, self.ops_writer, watched=writers)
        self.state = SiteState(site.name, site.loop_period_s, writers)
        self.tokens = TokenMeter(
            [
                TokenSource(t.id, str(t.url), t.metric, t.poll_period_s, t.timeout_s)
                for t in site.token_sources
            ]
        )
        self.metrics = Metrics(site.name, self.tokens, writers)
        if self.recorder is not None:
            collector = RecorderCollector(site.name, self.recorder, self.captures)
            self.metrics.registry.register(collector)
        self.mv = MvKeeper(self.store, site.mv)  # every event's M&V, kept once it is over
        self.metrics.registry.register(MvCollector(site.name, lambda: self.mv.latest))
        # A utility's events (OpenADR 3): stored like an operator's; only a leader changes them.
        self.ven = None
        if site.openadr.enabled:
            leading = self.ha.may_write if self.ha is not None else (lambda: True)
            self.ven = Ven(
                site.openadr,
                self.operations,
                lambda: self.state.last,
                self.mv.baseline_w,
                leading,
            )
        # The planner looks ahead in a process of its own; each tick reads its newest plan.
        self.planner = planner = Planner(site) if site.planner.enabled else None
        self.metrics.registry.register(
            PlannerCollector(site.name, lambda: planner.failures_total if planner else 0)
        )
        self.loop = ControlLoop(
            site,
            self.drivers,
            Publisher(
                self.state,
                self.metrics,
                self.store,
                self.alarms,
                self.prune,
                self.recorder,
                self.captures,
            ),
            self.operations,
            self.ha.leadership if self.ha is not None else None,
            (lambda: self.ven.status) if self.ven is not None else None,
            self.planner,
        )
        configs = {d.id: d for d in site.devices}
        self.bridge = Bridge(
            self.operations,
            self.db,
            self.state,
            self.alarms,
            self.metrics,
            configs,
            maps,
            self.captures,
            self.ha,
            self.ven,
        )
        self.log_level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self.api_process: ApiProcess | None = None  # while running

    @cached_property
    def app(self) -> FastAPI:
        """The API over an in-process link to the bridge: the same app, requests and JSON the
        API process runs, without its process (tests drive it in their own event loop)."""
        from controller.api import create_app
        from controller.link import InProcessLink

        link = InProcessLink(self.bridge.handle, self.site.loop_period_s)
        return create_app(link, self.db, self.site.data_dir, self.site.api_limits, self.site.mv)

    def api_spec(self) -> ApiSpec:
        site = self.site
        return ApiSpec(
            site.api_host,
            site.api_port,
            self.db_path,
            site.data_dir,
            site.loop_period_s,
            site.api_limits,
            self.api_tls(),
            self.log_level,
            site.mv,
        )

    def api_tls(self) -> tuple[Path, Path] | None:
        """The API's certificate and key: the site's, or those made once in `auto_dir`."""
        tls = self.site.api_tls
        if tls is None or not tls.enabled:
            return None
        if tls.certificate is not None and tls.private_key is not None:
            return tls.certificate, tls.private_key
        assert tls.auto_dir is not None
        hosts = sorted(
            {socket.gethostname(), "localhost", "127.0.0.1", self.site.api_host, *tls.hosts}
        )
        hosts = [h for h in hosts if h not in ("0.0.0.0", "::")]
        ca, pair = api_certificate(tls.auto_dir, hosts)
        log.info("API certificate", extra={"certificate": str(pair.certificate), "ca": str(ca)})
        return pair.certificate, pair.private_key

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then close every device link, the API and the store."""
        # The API first: a taken port is a clear error, not a half-started site.
        api = self.api_process = ApiProcess(self.api_spec(), self.bridge)
        await asyncio.to_thread(api.start)
        for driver in self.drivers.values():
            driver.start()
        self.tokens.start()
        # Half a million long-lived objects (OPC UA address space, numba, FastAPI) exist now;
        # a full GC pass over them stalls the process for 0.2–0.7 s. Collect once, then keep
        # them out of later passes, so GC pauses stay small while the loop runs.
        gc.collect()
        gc.freeze()
        self.store.event("controller_started", site=self.site.name)
        # The API serves from its own process: no request, however large or slow, can take
        # this interpreter from the loop; it is started anew if it dies.
        watch_task = asyncio.create_task(api.watch(stop), name="api-watch")
        ha_stop = asyncio.Event()  # the node steps down only after the loop has stopped
        ha_task = asyncio.create_task(self.ha.run(ha_stop)) if self.ha is not None else None
        loop_task = asyncio.create_task(self.loop.run(stop), name="loop")
        side_tasks = [watch_task, asyncio.create_task(self.mv.run(stop), name="mv")]
        if self.ven is not None:
            side_tasks.append(asyncio.create_task(self.ven.run(stop), name="openadr-ven"))
        if self.planner is not None:
            side_tasks.append(asyncio.create_task(self.planner.run(stop), name="planner"))
        log.info("controller running", extra={"api": api.spec.url, "site": self.site.name})
        try:
            await asyncio.wait(
                {loop_task, asyncio.create_task(stop.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop.set()
            await asyncio.gather(loop_task, *side_tasks, return_exceptions=True)
            if ha_task is not None:
                assert self.ha is not None
                ha_stop.set()
                # Bounded: an etcd that does not answer must not hold the shutdown up.
                _, late = await asyncio.wait({ha_task}, timeout=HA_STOP_S)
                for task in late:
                    task.cancel()
                with contextlib.suppress(TimeoutError):  # the standby leads at once
                    await asyncio.wait_for(self.ha.close(), HA_STOP_S)
            await asyncio.to_thread(api.stop)
            for driver in self.drivers.values():
                await driver.stop()
            await self.tokens.stop()
            self.store.event("controller_stopped", site=self.site.name)
            await asyncio.to_thread(self.close)  # drains the writers (a locked disk: bounded)
            log.info("controller stopped")

    def prune(self, now_s: float) -> None:
        """Housekeeping, hourly: hand the deletion of rows past their time, and a backup when
        one is due, to the writers."""
        keep = self.site.retention
        self.store.prune(now_s - keep.samples_days * 86400.0)
        audit_before = now_s - keep.audit_days * 86400.0
        notices_before = now_s - keep.notices_days * 86400.0
        self.ops_writer.put(
            lambda: self.db.prune(audit_before, notices_before),
            "prune audit, alarms, events, notices",
        )
        if self.site.backup.dir is not None and self._backup_idle.acquire(blocking=False):
            # A thread of its own: a slow or failing backup holds up no other write.
            threading.Thread(target=self._backup, name="backup", daemon=True).start()

    def _backup(self) -> None:
        """A backup if one is due (by the newest in the folder: restarts do not add more)."""
        b = self.site.backup
        assert b.dir is not None
        try:
            if dbfile.backup_due(b.dir, self.site.name, b.every_h * 3600.0):
                out = dbfile.periodic_backup(self.db_path, b.dir, self.site.name, b.keep)
                log.info("backup made", extra={"file": str(out)})
        except Exception as exc:  # a full or missing folder: said, and tried next hour
            self.backup_failures_total += 1
            log.error("backup failed", extra={"folder": str(b.dir), "error": str(exc)})
        finally:
            self._backup_idle.release()

    def close(self) -> None:
        """Drain and close the store and the operators' writer, then the file (a write the
        disk still refuses after the writers' time is up is logged as lost)."""
        if self.captures is not None:
            self.captures.close()
        if self.recorder is not None:
            self.recorder.close()
        self.store.close()
        self.ops_writer.close()
        self.db.close()
        self._run_lock.close()
