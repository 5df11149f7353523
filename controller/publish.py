"""Fan-out of each tick: state for the API, metrics, the store, the log line and events."""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.alarms import AlarmBook
from controller.metrics import Metrics
from controller.record import TickRecord
from controller.recorder.captures import CaptureKeeper
from controller.recorder.recorder import Recorder
from controller.state import SiteState
from controller.store import Store

log = logging.getLogger("gridpilot.site")
SAMPLE_PERIOD_S = 1.0
START_GRACE_S = 10.0  # devices still connecting at start: "degraded" is not yet worth a warning
HOUSEKEEPING_PERIOD_S = 3600.0  # retention: old rows deleted once an hour (and at start)


class Publisher:
    def __init__(
        self,
        state: SiteState,
        metrics: Metrics,
        store: Store,
        alarms: AlarmBook | None = None,
        housekeeping: Callable[[float], None] | None = None,
        recorder: Recorder | None = None,
        captures: CaptureKeeper | None = None,
    ) -> None:
        self.state, self.metrics, self.store, self.alarms = state, metrics, store, alarms
        self.housekeeping = housekeeping  # given the wall time; hands its work to the writers
        self.recorder, self.captures = recorder, captures
        self._next_housekeeping_at = 0.0
        self._next_sample_at = 0.0
        self._mode: str | None = None
        self._first_tick_at: float | None = None
        self._degraded_said = False
        self._waiting_said = False
        self._connected: dict[str, bool] = {}

    def __call__(self, rec: TickRecord) -> None:
        self.state.update(rec)
        self.metrics.observe(rec)
        if self.recorder is not None:
            self.recorder.record(rec)
        if self.captures is not None:
            active = self.alarms.active if self.alarms is not None else ()
            self.captures.observe(rec, frozenset(a.key for a in active))
        if self.alarms is not None:
            self.alarms.update(rec)
        self._events(rec)
        if rec.monotonic >= self._next_sample_at:
            self._next_sample_at = rec.monotonic + SAMPLE_PERIOD_S
            self._sample(rec)
        if self.housekeeping is not None and rec.monotonic >= self._next_housekeeping_at:
            self._next_housekeeping_at = rec.monotonic + HOUSEKEEPING_PERIOD_S
            self.housekeeping(rec.wall_time)

    def _events(self, rec: TickRecord) -> None:
        if self._first_tick_at is None:
            self._first_tick_at = rec.monotonic
        starting = rec.monotonic - self._first_tick_at < START_GRACE_S
        if rec.mode != self._mode:
            self.store.event(
                "mode_changed", old=self._mode, new=rec.mode, missing=list(rec.readings.missing)
            )
            self._mode = rec.mode
            self._degraded_said = False
        if rec.mode == "degraded" and not self._degraded_said:
            # Said once per episode; in the first seconds of a start, while the drivers are
            # still connecting, at info (that is no fault); a warning if it lasts.
            missing = ",".join(rec.readings.missing)
            if starting and not self._waiting_said:
                log.info(
                    "starting: waiting for the devices' first data", extra={"missing": missing}
                )
                self._waiting_said = True
            elif not starting:
                log.warning("control degraded", extra={"missing": missing})
                self._degraded_said = True
        for dev in rec.snapshot.devices.values():
            if self._connected.get(dev.id) != dev.connected:
                kind = "device_connected" if dev.connected else "device_disconnected"
                self.store.event(kind, dev.id, error=dev.last_error)
                self._connected[dev.id] = dev.connected

    def _sample(self, rec: TickRecord) -> None:
        rd = rec.readings
        grid_target = rec.result.grid_target_w if rec.result else None
        self.store.sample(
            {
                "time_s": rec.wall_time,
                "mode": rec.mode,
                "it_w": rd.it_w,
                "cooling_w": rd.cooling_w,
                "site_load_w": rec.site_load_w,
                "grid_w": rd.grid_w,
                "grid_target_w": grid_target,
                "battery_w": rd.battery_w,
                "grid_frequency_hz": rd.frequency_hz,
                "soc_ratio": dict(rd.soc),
            }
        )
        mean_soc = sum(rd.soc.values()) / len(rd.soc) if rd.soc else None
        line = {
            "it_w": rd.it_w,
            "grid_w": rd.grid_w,
            "grid_target_w": grid_target,
            "battery_w": rd.battery_w,
            "soc": mean_soc,
            "mode": rec.mode,
            "tick_ms": rec.duration_s * 1e3,
        }
        if (lead := rec.leadership) is not None:  # an HA pair: who this is, and its token
            line |= {"node": lead.node, "role": lead.role, "token": lead.token}
        log.info("site", extra=line)
