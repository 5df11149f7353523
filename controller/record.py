"""The tick's record: everything a tick read, decided and ran with, as one immutable value.

The loop makes one per tick and hands it to every reader (the API's state, metrics and their
collectors, alarms, the store) across threads; no reader reaches into drivers or live dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.config import DispatchConfig
from controller.cooling import CoolingCommand
from controller.dispatch import DispatchInputs, DispatchResult
from controller.notices import Notice
from controller.setpoints import Mode, Setpoints
from controller.site import Command, SiteReadings
from controller.snapshot import Snapshot

if TYPE_CHECKING:
    from controller.grid.status import VenStatus
    from controller.ha.lease import Leadership
    from controller.plans import Plan


@dataclass(frozen=True)
class InForce:
    """The operators' settings a tick runs with."""

    mode: Mode
    dispatch: DispatchConfig  # the site's, with the setpoints and the strictest event cap
    setpoints: Setpoints
    shed_w: float  # from shed events: load the site should shed now
    events: tuple[int, ...]  # ids of the events in force
    # Workload notices pending now, in order of their time: the planner plans from them
    # (off the tick's path), state and metrics show them.
    notices: tuple[Notice, ...] = ()


@dataclass(frozen=True)
class Decision:
    """What the control function decided from one tick's readings and settings."""

    # "auto", "manual", "safe", "degraded" (data missing: assets stand down), or "standby"
    # (another controller of an HA pair leads: nothing is written)
    mode: str
    site_load_w: float | None
    inputs: DispatchInputs | None  # what the core was given (None: data missing)
    result: DispatchResult | None  # None: data missing, every asset stood down
    cooling: Mapping[str, CoolingCommand | None]  # per CDU (None: waiting for first data)
    commands: tuple[Command, ...]  # setpoints and heartbeats to write
    plan_w: float = 0.0  # the planner's feed-forward the core was given (0: none, or not auto)


@dataclass(frozen=True)
class TickRecord:
    seq: int
    wall_time: float
    monotonic: float
    period_s: float
    snapshot: Snapshot  # readings, link states and counters, typed assets
    readings: SiteReadings
    decision: Decision
    in_force: InForce
    duration_s: float
    lateness_s: float
    overruns_total: int
    write_errors: tuple[str, ...]
    leadership: Leadership | None = None  # HA: this node's role and token (None: HA off)
    grid_link: VenStatus | None = None  # the OpenADR VEN's status (None: no VEN)
    plan: Plan | None = None  # the newest plan as the tick read it (None: planner off, none yet)

    # The decision's parts, as readers name them.
    @property
    def mode(self) -> str:
        return self.decision.mode

    @property
    def result(self) -> DispatchResult | None:
        return self.decision.result

    @property
    def inputs(self) -> DispatchInputs | None:
        return self.decision.inputs

    @property
    def site_load_w(self) -> float | None:
        return self.decision.site_load_w

    @property
    def cooling(self) -> Mapping[str, CoolingCommand | None]:
        return self.decision.cooling
