"""The driver seam: what every protocol driver offers the control loop.

A driver owns one device. It polls in its own asyncio task with its own timeout and backoff,
keeps the latest value of every point with the time it was read, and writes setpoints on
request. It does I/O only: no control decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.devicemap import DeviceMap

log = logging.getLogger("gridpilot.drivers")


@dataclass(frozen=True)
class PointValue:
    value: float
    unit: str
    read_at: float  # time.monotonic() when the value arrived
    valid: bool  # finite and inside the map's range


@dataclass(frozen=True)
class DriverSettings:
    poll_period_s: float = 0.05
    timeout_s: float = 0.5
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    retries: int = 1  # a read the device answered with an error (e.g. busy) is tried again
    min_gap_s: float = 0.0  # between two requests to the device (slow gateways need one)


LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass
class DriverCounters:
    polls_total: int = 0
    errors_total: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)  # timeout, connection, ...
    retries_total: int = 0
    writes_total: int = 0
    write_errors_total: int = 0
    writes_fenced_total: int = 0  # queued, then not sent: this controller no longer leads
    last_latency_s: float = math.nan
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=1024))  # of polls
    # A histogram of every poll's duration since start: cumulative counts per bucket bound.
    latency_bucket_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_S))
    latency_sum_s: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        self.last_latency_s = seconds
        self.latencies_s.append(seconds)
        self.latency_sum_s += seconds
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if seconds <= bound:
                self.latency_bucket_counts[i] += 1

    last_error: str | None = None
    last_write_error: str | None = None
    last_write_error_at: float = -math.inf  # time.monotonic()


class DeviceIOError(RuntimeError):
    """A read or write that failed; the message names device, point and value."""


class FrozenDataError(Exception):
    """The device answers, but its own heartbeat stands still: its values are old."""

    kind = "frozen"


class DeviceAnswerError(OSError):
    """A read the device answered with an error (e.g. a Modbus exception)."""

    kind = "exception"


class DeviceMismatchError(ConnectionError):
    """The device answers, but does not show what its map says it must."""

    kind = "mismatch"


class DeviceSecurityError(ConnectionError):
    """The device refused our credentials, or offers no security we accept."""

    kind = "security"


class WriteFenced(Exception):
    """A write not sent: this controller no longer leads (an HA pair's fence said no)."""


class DeviceRejectedError(Exception):
    """The device answered a write with an error (e.g. a Modbus exception): the link is up."""

    kind = "rejected"


# Every kind error_kind() can answer: a bounded label set for metrics.
ERROR_KINDS = ("timeout", "connection", "exception", "frozen", "mismatch", "security", "other")


def error_kind(exc: BaseException) -> str:
    """A bounded label for an error: what an operator would look for first."""
    if kind := getattr(exc, "kind", None):
        return str(kind)
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError | EOFError):
        return "connection"
    return "other"


class DeviceDriver(ABC):
    """Poll loop, timestamps, error counters and backoff; subclasses speak the protocol."""

    def __init__(self, device_id: str, devmap: DeviceMap, settings: DriverSettings) -> None:
        self.device_id = device_id
        self.map = devmap
        self.settings = settings
        self.values: dict[str, PointValue] = {}
        self.identity: dict[str, str] = {}  # maker, model, serial: as the device says
        self.frozen = False  # the device's own heartbeat stopped: its values are not refreshed
        self._alive_value = math.nan
        self._alive_since = 0.0
        self.counters = DriverCounters()
        self.connected = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._pending: dict[str, tuple[float, list[asyncio.Future[None]]]] = {}
        # The fence of an HA pair: asked just before each write goes on the wire, so a write
        # queued before this controller lost its lease (or before it was frozen) is never sent.
        self.may_write: Callable[[], bool] = lambda: True

    @property
    def kind(self) -> str:
        return self.map.kind

    # --- protocol-specific parts -------------------------------------------------------
    @abstractmethod
    async def _connect(self) -> None: ...

    @abstractmethod
    async def _read_all(self) -> dict[str, float]: ...

    @abstractmethod
    async def _write(self, point: str, value: float) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    def _link_up(self) -> bool:
        """Whether the transport still stands (to tell a dropped link from a silent device)."""
        return True

    # --- shared behaviour --------------------------------------------------------------
    async def open(self) -> None:
        """Connect by hand, for tools and benchmarks that poll with `read_once` (never
        while the driver's own task runs: one owner per link)."""
        await asyncio.wait_for(self._connect(), self.settings.timeout_s)
        self.connected = True

    async def read_once(self) -> dict[str, PointValue]:
        """One poll of every point by hand, after `open`."""
        if self._task is not None:
            raise RuntimeError(f"{self.device_id}: the driver's task owns the link")
        await self._poll_once()
        return self.values

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"driver:{self.device_id}")

    async def stop(self) -> None:
        """Let a request in flight finish (up to its timeout), then close the link."""
        if self._task:
            self._stopping.set()
            self._wake.set()
            with contextlib.suppress(TimeoutError):  # then wait_for has cancelled it
                await asyncio.wait_for(self._task, self.settings.timeout_s * 2)
        self._fail_pending(DeviceIOError(f"{self.device_id}: driver stopped"))
        await self._close()
        self.connected = False

    async def _idle(self, seconds: float) -> None:
        """Wait until `seconds` pass, a write is submitted, or the driver is told to stop."""
        if seconds > 0 and not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _run(self) -> None:
        # One task owns the link: writes go first, polls when due. A request is never
        # cancelled half-way, which would leave its late answer to confuse the next one.
        backoff = self.settings.backoff_initial_s
        next_poll = 0.0
        while not self._stopping.is_set():
            try:
                if not self.connected:
                    await asyncio.wait_for(self._connect(), self.settings.timeout_s)
                    self.connected = True
                    log.info("device connected", extra={"device": self.device_id})
                await self._flush_writes()
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.settings.poll_period_s
                    await self._poll_once()
                    if self.counters.last_error is not None and not self.frozen:
                        # The episode is over: said once, then no longer shown as current.
                        log.info(
                            "device recovered",
                            extra={"device": self.device_id, "was": self.counters.last_error},
                        )
                        self.counters.last_error = None
                backoff = self.settings.backoff_initial_s
                await self._idle(next_poll - time.monotonic())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any link fault: count, report, reconnect with backoff
                if isinstance(exc, TimeoutError) and self.connected and not self._link_up():
                    exc = ConnectionError("the device closed the connection")
                self._record_error(exc)
                self._fail_pending(DeviceIOError(f"{self.device_id}: {self.counters.last_error}"))
                if self.connected:
                    await self._close()
                    self.connected = False
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                backoff = min(backoff * 2, self.settings.backoff_max_s)

    async def _poll_once(self) -> None:
        started = time.monotonic()
        raw = await asyncio.wait_for(self._read_all(), self.settings.timeout_s)
        now = time.monotonic()
        self.counters.polls_total += 1
        self.counters.observe_latency(now - started)
        if self._frozen(raw, now):
            return  # the old values age until the snapshot calls them stale
        points = self.map.points
        self.values = {
            name: PointValue(v, points[name].unit, now, points[name].in_range(v))
            for name, v in raw.items()
        }

    def _frozen(self, raw: dict[str, float], now: float) -> bool:
        """A device that answers but whose own heartbeat stands still shows old data."""
        point = self.map.alive_point
        if point is None or point not in raw:
            return False
        if raw[point] != self._alive_value:
            self._alive_value, self._alive_since = raw[point], now
            self.frozen = False
            return False
        stuck_s = now - self._alive_since
        if stuck_s > self.map.alive_timeout_s and not self.frozen:
            self.frozen = True
            self._record_error(FrozenDataError(f"{point} unchanged for {stuck_s:.1f} s"))
        return self.frozen

    async def _flush_writes(self) -> None:
        while self._pending:
            point = next(iter(self._pending))
            value, waiters = self._pending.pop(point)
            where = f"{self.device_id}.{point} = {value!r} {self.map.point(point).unit}"
            try:
                if not self.may_write():
                    raise WriteFenced(where)
                # In this task (not wait_for's new one): nothing else runs between the fence's
                # check and the request going out, so a freeze cannot fall in between.
                async with asyncio.timeout(self.settings.timeout_s):
                    await self._write(point, value)
            except WriteFenced:
                self.counters.writes_fenced_total += 1
                for w in waiters:
                    if not w.done():
                        w.set_exception(DeviceIOError(f"{where}: not sent, fenced (not leader)"))
                continue
            except DeviceRejectedError as exc:  # the device said no: the link is fine
                self._write_failed(DeviceIOError(f"{where}: {exc}"), waiters)
                continue
            except Exception as exc:
                self._write_failed(DeviceIOError(f"{where}: {type(exc).__name__}: {exc}"), waiters)
                raise
            self.counters.writes_total += 1
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _write_failed(self, error: DeviceIOError, waiters: list[asyncio.Future[None]]) -> None:
        self.counters.write_errors_total += 1
        self.counters.last_write_error = str(error)
        self.counters.last_write_error_at = time.monotonic()
        for w in waiters:
            if not w.done():
                w.set_exception(error)

    def _fail_pending(self, error: DeviceIOError) -> None:
        pending, self._pending = self._pending, {}
        for _, waiters in pending.values():
            self._write_failed(error, waiters)

    def _record_error(self, exc: BaseException) -> None:
        self.counters.errors_total += 1
        kind = error_kind(exc) if error_kind(exc) in ERROR_KINDS else "other"
        self.counters.errors_by_kind[kind] = self.counters.errors_by_kind.get(kind, 0) + 1
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if message != self.counters.last_error:
            log.warning("device error", extra={"device": self.device_id, "error": message})
        self.counters.last_error = message

    def submit(self, point: str, value: float) -> asyncio.Future[None]:
        """Queue a write of one rw point after checking it against the map; returns at once.

        A newer value for a point still queued replaces the older one (only the latest
        setpoint matters). Raises DeviceIOError for a value that must not be sent. The
        future resolves when the device acknowledged the write, or fails with DeviceIOError.
        """
        p = self.map.point(point)
        where = f"{self.device_id}.{point} = {value!r} {p.unit}"
        if not p.writable:
            raise DeviceIOError(f"{where}: point is read-only")
        if not p.in_range(value):
            raise DeviceIOError(f"{where}: outside the map's range {p.range}")
        if not self.connected:
            raise DeviceIOError(f"{where}: device not connected")
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A caller that does not wait on the acknowledgement must not leave it unobserved.
        ack.add_done_callback(lambda f: f.cancelled() or f.exception())
        _, waiters = self._pending.pop(point, (value, []))
        self._pending[point] = (value, [*waiters, ack])
        self._wake.set()
        return ack

    async def write(self, point: str, value: float) -> None:
        """Write one rw point and wait for the device's acknowledgement."""
        await self.submit(point, value)
