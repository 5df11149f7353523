"""Capture triggers, pure: which ticks start a capture, and why.

Each tick's facts (`TickFacts`) against the last tick's (`TriggerState`) give the edges:
- `frequency_excursion`: the frequency goes beyond `excursion_hz` from nominal, also at the first
  tick if it already is (a disturbance is worth keeping whenever it is first seen). An unknown
  frequency (None, NaN) changes nothing: a reading missed during an excursion does not end it,
  nor start a new one when the readings come back.
- `alarm`: alarms become active, also at the first tick (an alarm is a condition, like an
  excursion); one trigger names every alarm raised on that tick.
- `mode_change`: the mode differs from the last tick's.
- `event_start`, `event_end`: events come into force or leave it.
- `operator`: an operator's request, always.
At the first tick the mode and the events in force are merely the starting state: no trigger.

One capture per cause at a time: a trigger whose cause already has a capture open (one triggered
less than `post_s` before) makes no new capture and extends nothing. A frequency that hovers on
the threshold, or an alarm that flaps, thus makes one capture per window, not one a tick, and the
open capture holds the repeats anyway. Causes are independent: a mode change during a frequency
capture still makes its own (the caller may merge windows that overlap). An operator's request
is never held back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

FREQUENCY_EXCURSION = "frequency_excursion"
ALARM = "alarm"
MODE_CHANGE = "mode_change"
EVENT_START = "event_start"
EVENT_END = "event_end"
OPERATOR = "operator"
CAUSES = (FREQUENCY_EXCURSION, ALARM, MODE_CHANGE, EVENT_START, EVENT_END, OPERATOR)


@dataclass(frozen=True)
class TriggerConfig:
    nominal_hz: float = 50.0
    excursion_hz: float = 0.1  # beyond this from nominal: an excursion
    pre_s: float = 30.0  # a capture keeps this much before its trigger
    post_s: float = 60.0  # and this much after; its cause triggers nothing new meanwhile

    def __post_init__(self) -> None:
        if not (self.nominal_hz > 0 and self.excursion_hz > 0):
            raise ValueError(
                f"triggers: nominal {self.nominal_hz!r} Hz and excursion threshold "
                f"{self.excursion_hz!r} Hz must be positive"
            )
        if not (self.pre_s >= 0 and self.post_s > 0):
            raise ValueError(
                f"triggers: a capture's window needs pre_s >= 0 and post_s > 0 "
                f"(pre_s={self.pre_s!r}, post_s={self.post_s!r})"
            )


@dataclass(frozen=True)
class TickFacts:
    time_s: float  # the tick's wall time, unix s
    frequency_hz: float | None  # None or NaN: unknown this tick
    mode: str
    alarms: frozenset[str] = frozenset()  # the keys of the alarms active
    events: tuple[int, ...] = ()  # the ids of the events in force
    operator_request: str | None = None  # an operator asked for a capture (why, or who)


@dataclass(frozen=True)
class Trigger:
    time_s: float
    cause: str  # one of CAUSES
    detail: str  # for people: what happened


@dataclass(frozen=True)
class TriggerState:
    started: bool = False  # a tick has been seen: edges have a before
    mode: str = ""
    alarms: frozenset[str] = frozenset()
    events: frozenset[int] = frozenset()
    beyond: bool = False  # the last known frequency was an excursion
    last_s: Mapping[str, float] = field(default_factory=dict)  # each cause's last capture


def window(cfg: TriggerConfig, trigger: Trigger) -> tuple[float, float]:
    """The capture a trigger makes: [time_s - pre_s, time_s + post_s], unix s."""
    return trigger.time_s - cfg.pre_s, trigger.time_s + cfg.post_s


def _beyond(cfg: TriggerConfig, frequency_hz: float | None, was_beyond: bool) -> bool:
    """Whether the frequency is an excursion; unknown: as it last was."""
    if frequency_hz is None or not math.isfinite(frequency_hz):
        return was_beyond
    return abs(frequency_hz - cfg.nominal_hz) > cfg.excursion_hz


def _ids(ids: frozenset[int]) -> str:
    return ("event " if len(ids) == 1 else "events ") + ", ".join(map(str, sorted(ids)))


def _edges(cfg: TriggerConfig, state: TriggerState, tick: TickFacts, beyond: bool) -> list[Trigger]:
    """Every cause's edge on this tick, before any is held back (`beyond`: an excursion now)."""
    t = tick.time_s
    edges: list[Trigger] = []
    if beyond and not state.beyond:
        f = tick.frequency_hz
        assert f is not None  # an unknown frequency never starts an excursion
        detail = (
            f"{f:.3f} Hz, {f - cfg.nominal_hz:+.3f} Hz from {cfg.nominal_hz:g} Hz "
            f"(threshold ±{cfg.excursion_hz:g} Hz)"
        )
        edges.append(Trigger(t, FREQUENCY_EXCURSION, detail))
    if raised := tick.alarms - state.alarms:
        edges.append(Trigger(t, ALARM, ", ".join(sorted(raised))))
    if not state.started:
        return edges  # the starting mode and events are no change
    if tick.mode != state.mode:
        edges.append(Trigger(t, MODE_CHANGE, f"{state.mode} -> {tick.mode}"))
    events = frozenset(tick.events)
    if started := events - state.events:
        edges.append(Trigger(t, EVENT_START, _ids(started)))
    if ended := state.events - events:
        edges.append(Trigger(t, EVENT_END, _ids(ended)))
    return edges


def _is_open(cfg: TriggerConfig, last_s: Mapping[str, float], cause: str, time_s: float) -> bool:
    """A capture of this cause is open at `time_s`. A clock stepped back before it closes it."""
    start_s = last_s.get(cause)
    return start_s is not None and start_s <= time_s < start_s + cfg.post_s


def step(
    state: TriggerState, cfg: TriggerConfig, tick: TickFacts
) -> tuple[TriggerState, list[Trigger]]:
    """One tick: the triggers it makes (at most one per cause), and the state for the next."""
    beyond = _beyond(cfg, tick.frequency_hz, state.beyond)
    triggers = [
        edge
        for edge in _edges(cfg, state, tick, beyond)
        if not _is_open(cfg, state.last_s, edge.cause, edge.time_s)
    ]
    if tick.operator_request is not None:
        triggers.append(Trigger(tick.time_s, OPERATOR, tick.operator_request or "operator request"))
    last_s = {**state.last_s, **{trigger.cause: trigger.time_s for trigger in triggers}}
    after = TriggerState(
        started=True,
        mode=tick.mode,
        alarms=frozenset(tick.alarms),
        events=frozenset(tick.events),
        beyond=beyond,
        last_s=last_s,
    )
    return after, triggers
