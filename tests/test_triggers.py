"""Capture triggers: each cause fires once on its edge, not every tick while it lasts; a
frequency hovering on the threshold makes one capture per window; the first tick's state is no
change (but an excursion already there is); an operator's request always makes a capture."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.recorder.triggers import (
    ALARM,
    EVENT_END,
    EVENT_START,
    FREQUENCY_EXCURSION,
    MODE_CHANGE,
    OPERATOR,
    TickFacts,
    Trigger,
    TriggerConfig,
    TriggerState,
    step,
    window,
)

CFG = TriggerConfig()  # 50 Hz, ±0.1 Hz, 30 s before, 60 s after
T0_S = 1_796_013_000.0
QUIET = TickFacts(T0_S, 50.0, "auto")  # a tick with nothing to say


def run(ticks: Iterable[TickFacts], cfg: TriggerConfig = CFG) -> list[Trigger]:
    state, made = TriggerState(), []
    for tick in ticks:
        state, triggers = step(state, cfg, tick)
        made += triggers
    return made


def ticks(n: int, start_s: float = T0_S, **facts) -> list[TickFacts]:
    """n ticks 0.1 s apart from start_s, each saying `facts` (else QUIET's)."""
    return [replace(QUIET, time_s=start_s + 0.1 * k, **facts) for k in range(n)]


def test_each_cause_fires_once_on_its_edge():
    t1 = T0_S + 1.0
    made = run(
        ticks(10)
        + ticks(50, t1, frequency_hz=49.85, alarms=frozenset({"meter_stale"}), events=(7,))
        + ticks(50, t1 + 5.0, mode="safe")
    )
    assert made == [
        Trigger(t1, FREQUENCY_EXCURSION, "49.850 Hz, -0.150 Hz from 50 Hz (threshold ±0.1 Hz)"),
        Trigger(t1, ALARM, "meter_stale"),
        Trigger(t1, EVENT_START, "event 7"),
        Trigger(t1 + 5.0, MODE_CHANGE, "auto -> safe"),
        Trigger(t1 + 5.0, EVENT_END, "event 7"),
    ]


def test_a_tick_makes_one_trigger_per_cause():
    made = run(
        [QUIET, replace(QUIET, time_s=T0_S + 0.1, alarms=frozenset({"b", "a"}), events=(9, 3))]
    )
    assert [(t.cause, t.detail) for t in made] == [(ALARM, "a, b"), (EVENT_START, "events 3, 9")]


def test_the_first_tick_is_a_start_not_a_change():
    """The starting mode and the events in force make no capture; an excursion or an alarm
    already there does."""
    first = TickFacts(T0_S, 49.7, "safe", frozenset({"bess_offline"}), (4,))
    made = run([first, replace(first, time_s=T0_S + 0.1)])
    assert [t.cause for t in made] == [FREQUENCY_EXCURSION, ALARM]
    assert run([replace(first, frequency_hz=50.02, alarms=frozenset())] * 3) == []


def test_an_unknown_frequency_neither_ends_nor_starts_an_excursion():
    short = replace(CFG, post_s=0.01)  # no hold-back between ticks: only edges count
    frequencies = [50.0, 49.8, None, float("nan"), 49.8, None, 50.0, None, 49.8]
    made = run(
        (replace(QUIET, time_s=T0_S + k, frequency_hz=f) for k, f in enumerate(frequencies)), short
    )
    assert [t.time_s - T0_S for t in made] == [1, 8]


def test_a_hovering_frequency_makes_one_capture_per_window():
    """49.89 and 49.91 Hz in turn for 200 s: an edge every other tick, four captures."""
    hover = [
        replace(QUIET, time_s=T0_S + 0.1 * k, frequency_hz=(49.89, 49.91)[k % 2])
        for k in range(2000)
    ]
    made = run(hover)
    assert [t.time_s - T0_S for t in made] == pytest.approx([0.0, 60.0, 120.0, 180.0])
    assert window(CFG, made[1]) == (made[1].time_s - 30.0, made[1].time_s + 60.0)


def test_causes_are_held_back_each_on_its_own():
    """An alarm flapping within a frequency capture's window: one capture each."""
    flapping = [
        replace(QUIET, time_s=T0_S + k, frequency_hz=49.8, alarms=frozenset({"x"} if k % 2 else ()))
        for k in range(50)
    ]
    assert [(t.cause, t.time_s - T0_S) for t in run(flapping)] == [
        (FREQUENCY_EXCURSION, 0),
        (ALARM, 1),
    ]


def test_an_operator_request_always_makes_a_capture():
    asked = [
        replace(QUIET, time_s=T0_S + 0.1 * k, operator_request=r)
        for k, r in enumerate(["alice: test", "", None, "bob"])
    ]
    assert [(t.cause, t.detail) for t in run(asked)] == [
        (OPERATOR, "alice: test"),
        (OPERATOR, "operator request"),
        (OPERATOR, "bob"),
    ]


def test_a_clock_stepped_back_does_not_silence_a_cause():
    made = run(
        [
            replace(QUIET, frequency_hz=49.8),
            replace(QUIET, time_s=T0_S + 1),
            replace(QUIET, time_s=T0_S - 3600, frequency_hz=49.8),
        ]
    )
    assert [t.time_s - T0_S for t in made] == [0, -3600]


@pytest.mark.parametrize(
    "bad",
    [
        {"excursion_hz": 0},
        {"nominal_hz": -50},
        {"pre_s": -1},
        {"post_s": 0},
        {"post_s": float("nan")},
    ],
)
def test_a_config_that_makes_no_sense_is_refused(bad):
    with pytest.raises(ValueError, match="triggers:"):
        TriggerConfig(**bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(49.5, 50.5)), min_size=1, max_size=400))
def test_every_excursion_is_inside_a_capture_and_captures_never_repeat(frequencies):
    """Whatever the frequency does: every onset of an excursion falls within a capture's
    window, and captures of the excursion are at least post_s apart."""
    cfg = replace(CFG, post_s=5.0)
    state, beyond, onsets, made = TriggerState(), False, [], []
    for k, f in enumerate(frequencies):
        t = T0_S + 0.1 * k
        if f is not None:
            if abs(f - 50.0) > 0.1 and not beyond:
                onsets.append(t)
            beyond = abs(f - 50.0) > 0.1
        state, triggers = step(state, cfg, replace(QUIET, time_s=t, frequency_hz=f))
        made += [trigger.time_s for trigger in triggers]
    assert all(later - earlier >= cfg.post_s for earlier, later in pairwise(made))
    assert all(any(s <= t < s + cfg.post_s for s in made) for t in onsets)
