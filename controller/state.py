"""Published state: the latest tick's record, as the API shows it. The loop swaps the record
in whole; the API's thread reads it (records are immutable)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from controller.notices import summary
from controller.record import TickRecord
from controller.writer import Writer

if TYPE_CHECKING:
    from controller.ha.lease import Leadership
    from controller.plans import Plan


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class SiteState:
    def __init__(self, site: str, period_s: float, writers: Sequence[Writer] = ()) -> None:
        self.site = site
        self.period_s = period_s
        self.writers = writers  # storage: ready says when a fault holds what should be kept
        self.last: TickRecord | None = None

    def update(self, record: TickRecord) -> None:
        self.last = record

    def tick_age_s(self, now_monotonic: float | None = None) -> float | None:
        if self.last is None:
            return None
        return (now_monotonic or time.monotonic()) - self.last.monotonic

    def ready(self) -> tuple[bool, str]:
        """Ready while ticks are fresh (within 3 periods) and the devices control needs are
        (not degraded; manual and safe modes are control as an operator asked for it)."""
        age = self.tick_age_s()
        if age is None:
            return False, "no tick yet"
        if age > 3 * self.period_s:
            return False, f"last tick {age:.3f} s ago (limit {3 * self.period_s:.3f} s)"
        if self.last is not None and self.last.mode == "degraded":
            return False, f"control degraded: missing {', '.join(self.last.readings.missing)}"
        lead = self.last.leadership if self.last is not None else None
        if lead is not None and lead.role != "leader":  # a balancer sends clients to the leader
            return False, f"{lead.role}: the leader is {lead.leader or 'unknown'}"
        failing = [w for w in self.writers if w.failing]
        if failing:
            return False, "storage failing (control goes on): " + "; ".join(
                f"{w.name}: {w.pending} writes held, {w.last_error}" for w in failing
            )
        return True, "ok"

    def to_json(self) -> dict[str, Any]:
        rec = self.last
        if rec is None:
            return {"site": self.site, "tick": None, "mode": "starting", "devices": {}}
        rd = rec.readings
        result = rec.result
        force = rec.in_force
        return {
            "site": self.site,
            "mode": rec.mode,
            "tick": {
                "seq": rec.seq,
                "time": iso(rec.wall_time),
                "age_s": self.tick_age_s(),
                "period_s": rec.period_s,
                "duration_s": rec.duration_s,
                "lateness_s": rec.lateness_s,
                "overruns_total": rec.overruns_total,
            },
            "measurements": {
                "it_w": rd.it_w,
                "cooling_w": rd.cooling_w,
                "site_load_w": rec.site_load_w,
                "grid_w": rd.grid_w,
                "grid_frequency_hz": rd.frequency_hz,
                "battery_w": rd.battery_w,
                "soc_ratio": dict(rd.soc),
                "reused_heat_w": rd.reused_heat_w,
                "missing": list(rd.missing),
            },
            "dispatch": None
            if result is None
            else {
                "grid_target_w": result.grid_target_w,
                "battery_w": result.battery_w,
                "unserved_w": result.unserved_w,
                "shed_request_w": result.shed_request_w,
                "frequency_response_w": result.frequency_response_w,
                "asset_setpoints_w": dict(result.asset_w),
                "plan_w": rec.decision.plan_w,
            },
            "in_force": {
                "ramp_up_w_per_s": force.dispatch.ramp_up_w_per_s,
                "ramp_down_w_per_s": force.dispatch.ramp_down_w_per_s,
                "import_cap_w": force.dispatch.import_cap_w,
                "shed_w": force.shed_w,
                "events": list(force.events),
            },
            "notices": summary(force.notices, rec.wall_time),  # as of the tick
            "planner": None if rec.plan is None else plan_json(rec.plan, rec.wall_time),
            "ha": None if (lead := rec.leadership) is None else ha_json(lead, rec.monotonic),
            "openadr": None if rec.grid_link is None else rec.grid_link.to_json(rec.wall_time),
            "cooling": {
                device: None
                if command is None
                else {
                    "supply_setpoint_c": command.supply_setpoint_c,
                    "pump_speed_ratio": command.pump_speed,
                    "fallback": command.fallback,
                }
                for device, command in rec.cooling.items()
            },
            "write_errors": list(rec.write_errors),
            "devices": {
                dev.id: {
                    "kind": dev.kind,
                    "connected": dev.connected,
                    "last_error": dev.last_error,
                    "points": {
                        name: {
                            "value": p.value if math.isfinite(p.value) else None,
                            "unit": p.unit,
                            "age_s": p.age_s,
                            "stale": p.stale,
                            "valid": p.valid,
                        }
                        for name, p in dev.points.items()
                    },
                }
                for dev in rec.snapshot.devices.values()
            },
        }


def plan_json(plan: Plan, now_s: float) -> dict[str, Any]:
    """The newest plan as the tick read it: when it starts, how long the planner took for it,
    what it plans for, and whether it is still used."""
    return {
        "start": iso(plan.start_s),
        "age_s": now_s - plan.start_s,
        "duration_s": plan.duration_s,
        "work_s": plan.work_s,
        "cpu_s": plan.cpu_s,
        "horizon_s": len(plan.values_w) * plan.dt_s,
        "events": plan.events,
        "stale": now_s > plan.until_s,
        "feed_forward_w": plan.at(now_s),  # what it says now: auto alone uses it
    }


def ha_json(lead: Leadership, now_monotonic: float) -> dict[str, Any]:
    """This node's part in an HA pair, as of a tick."""
    return {
        "role": lead.role,
        "node": lead.node,
        "leader": lead.leader,
        "token": lead.token,
        "writing": lead.may_write(now_monotonic),
        "since": iso(lead.since_s) if lead.since_s else None,
    }
