"""Fan-out of each tick: state for the API, metrics, the store, the log line and events."""

from __future__ import annotations

import logging

from controller.alarms import AlarmBook
from controller.metrics import Metrics
from controller.record import TickRecord
from controller.state import SiteState
from controller.store import Store

log = logging.getLogger("gridpilot.site")
SAMPLE_PERIOD_S = 1.0


class Publisher:
    def __init__(
        self, state: SiteState, metrics: Metrics, store: Store, alarms: AlarmBook | None = None
    ) -> None:
        self.state, self.metrics, self.store, self.alarms = state, metrics, store, alarms
        self._next_sample_at = 0.0
        self._mode: str | None = None
        self._connected: dict[str, bool] = {}

    def __call__(self, rec: TickRecord) -> None:
        self.state.update(rec)
        self.metrics.observe(rec)
        if self.alarms is not None:
            self.alarms.update(rec)
        self._events(rec)
        if rec.monotonic >= self._next_sample_at:
            self._next_sample_at = rec.monotonic + SAMPLE_PERIOD_S
            self._sample(rec)

    def _events(self, rec: TickRecord) -> None:
        if rec.mode != self._mode:
            self.store.event(
                "mode_changed", old=self._mode, new=rec.mode, missing=list(rec.readings.missing)
            )
            if rec.mode == "degraded":
                log.warning("control degraded", extra={"missing": ",".join(rec.readings.missing)})
            self._mode = rec.mode
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
        log.info(
            "site",
            extra={
                "it_w": rd.it_w,
                "grid_w": rd.grid_w,
                "grid_target_w": grid_target,
                "battery_w": rd.battery_w,
                "soc": mean_soc,
                "mode": rec.mode,
                "tick_ms": rec.duration_s * 1e3,
            },
        )
