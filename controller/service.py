"""The controller process: drivers, control loop, store and API, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import threading
from collections.abc import Iterator

import uvicorn

from controller import dbfile
from controller.alarms import AlarmBook
from controller.api import create_app
from controller.config import DeviceConfig, SiteConfig
from controller.dispatch import warm_up
from controller.loop import ControlLoop
from controller.metrics import Metrics
from controller.operations import Operations
from controller.opsdb import OpsDB
from controller.publish import Publisher
from controller.sitefile import device_maps
from controller.state import SiteState
from controller.store import Store
from controller.tokens import TokenMeter, TokenSource
from controller.writer import Writer
from drivers.base import DeviceDriver, DriverSettings
from drivers.devicemap import DeviceMap
from drivers.maploader import load_map
from drivers.modbus_client import ModbusDriver
from drivers.opcua_client import OpcUaDriver
from drivers.security import LinkSecurity

log = logging.getLogger("gridpilot")
DB_FILE = "gridpilot.sqlite"


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
            sec.peer_certificate,
            sec.username,
            sec.password_text(),
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


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
        self.store = Store(site.data_dir / DB_FILE)
        writers = (self.ops_writer, self.store.writer)
        self.alarms = AlarmBook(self.db, self.ops_writer, watched=writers)
        self.state = SiteState(site.name, site.loop_period_s, writers)
        self.tokens = TokenMeter(
            [
                TokenSource(t.id, str(t.url), t.metric, t.poll_period_s, t.timeout_s)
                for t in site.token_sources
            ]
        )
        self.metrics = Metrics(site.name, self.tokens, writers)
        self.loop = ControlLoop(
            site,
            self.drivers,
            Publisher(self.state, self.metrics, self.store, self.alarms, self.prune),
            self.operations,
        )
        configs = {d.id: d for d in site.devices}
        self.app = create_app(
            self.state, self.metrics, self.operations, self.db, self.alarms, configs, maps
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then close every device link, the API and the store."""
        config = uvicorn.Config(
            self.app,
            host=self.site.api_host,
            port=self.site.api_port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        api = _ApiServer(config)
        # Bind before anything starts, so a taken port is a clear error, not a half-started site.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: a response's head and body leave at once, instead
        # of the body waiting ~40 ms for the client's delayed ACK on keep-alive requests.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.site.api_host, self.site.api_port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"cannot listen on {self.site.api_host}:{self.site.api_port}: {exc.strerror}"
            ) from None
        for driver in self.drivers.values():
            driver.start()
        self.tokens.start()
        # Half a million long-lived objects (OPC UA address space, numba, FastAPI) exist now;
        # a full GC pass over them stalls the process for 0.2–0.7 s. Collect once, then keep
        # them out of later passes, so GC pauses stay small while the loop runs.
        gc.collect()
        gc.freeze()
        self.store.event("controller_started", site=self.site.name)
        # The API serves on its own thread and event loop: a burst of requests cannot delay a
        # tick (at 64 connections on one loop, ticks were skipped; on two, none are).
        api_task = asyncio.create_task(
            asyncio.to_thread(asyncio.run, api.serve(sockets=[sock])), name="api"
        )
        loop_task = asyncio.create_task(self.loop.run(stop), name="loop")
        log.info(
            "controller running",
            extra={
                "api": f"http://{self.site.api_host}:{self.site.api_port}",
                "site": self.site.name,
            },
        )
        try:
            done, _ = await asyncio.wait(
                {api_task, loop_task, asyncio.create_task(stop.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
            if api_task in done and not stop.is_set():
                api_task.result()  # the API could not start (port taken): raise it
                raise RuntimeError("API server stopped unexpectedly")
        finally:
            stop.set()
            api.should_exit = True
            await asyncio.gather(loop_task, api_task, return_exceptions=True)
            for driver in self.drivers.values():
                await driver.stop()
            await self.tokens.stop()
            self.store.event("controller_stopped", site=self.site.name)
            await asyncio.to_thread(self.close)  # drains the writers (a locked disk: bounded)
            sock.close()
            log.info("controller stopped")

    def prune(self, now_s: float) -> None:
        """Housekeeping, hourly: hand the deletion of rows past their time, and a backup when
        one is due, to the writers."""
        keep = self.site.retention
        self.store.prune(now_s - keep.samples_days * 86400.0)
        audit_before = now_s - keep.audit_days * 86400.0
        self.ops_writer.put(lambda: self.db.prune(audit_before), "prune audit, alarms, events")
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
        self.store.close()
        self.ops_writer.close()
        self.db.close()
        self._run_lock.close()
