"""A VTN's events as the OpenADR client library parses them, turned into gridpilot's caps and
sheds (`controller/grid/mapping.py`), and reconciled with what is stored
(`controller/grid/reconcile.py`). Pure: no server."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from openadr3_client.oadr301.models.event.event import ExistingEvent as Event301
from openadr3_client.oadr310.models.event.event import ExistingEvent as Event310

from controller.grid.config import OpenADRConfig
from controller.grid.mapping import map_event
from controller.grid.reconcile import Held, reconcile
from controller.grid.reports import report_period_s

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()
NOW = T0 - 600.0  # ten minutes before the events start


def iso(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, UTC).isoformat().replace("+00:00", "Z")


def event(
    payloads: list[tuple[str, Any]],
    units: str | None = "KW",
    start_s: float = T0,
    duration: str = "PT1H",
    modified_s: float = NOW - 60,
    model: type = Event301,
    **extra: Any,
) -> Any:
    """An event of one interval per payload, back to back from `start_s`."""
    body: dict[str, Any] = {
        "id": "ev-1",
        "createdDateTime": iso(NOW - 120),
        "modificationDateTime": iso(modified_s),
        "objectType": "EVENT",
        "programID": "prog-1",
        "intervalPeriod": {"start": iso(start_s), "duration": duration},
        "intervals": [
            {"id": i, "payloads": [{"type": kind, "values": [value]}]}
            for i, (kind, value) in enumerate(payloads)
        ],
        **extra,
    }
    if units is not None:
        kinds = sorted({k for k, _ in payloads})
        body["payloadDescriptors"] = [
            {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": k, "units": units}
            for k in kinds
        ]
    return model.model_validate(body)


CFG = OpenADRConfig.model_validate(
    {
        "simple_levels": {1: {"shed_w": 1e6}, 2: {"import_cap_w": 8e6}, 3: {"import_cap_w": 6e6}},
        "price_rules": [{"above": 0.5, "shed_w": 2e6}, {"above": 1.0, "import_cap_w": 7e6}],
    }
)


@pytest.mark.parametrize("model", [Event301, Event310])
def test_an_import_capacity_limit_becomes_an_import_cap_in_watts_per_interval(model: type):
    payloads = [("IMPORT_CAPACITY_LIMIT", 8000), ("IMPORT_CAPACITY_LIMIT", 7500)]
    m = map_event(event(payloads, model=model), CFG, NOW)
    assert not m.refused
    first, second = m.wanted
    assert (first.kind, first.value_w, first.start_s, first.end_s) == (
        "import_cap",
        8e6,
        T0,
        T0 + 3600,
    )
    assert first.ref == "ev-1/0" and second.ref == "ev-1/1"
    assert second.start_s == T0 + 3600  # intervals follow one another
    assert second.value_w == 7.5e6


def test_units_default_to_kilowatts_and_megawatts_are_understood():
    assert map_event(event([("IMPORT_CAPACITY_LIMIT", 9000)], units=None), CFG, NOW).wanted[
        0
    ].value_w == pytest.approx(9e6)
    assert map_event(event([("IMPORT_CAPACITY_LIMIT", 9)], units="MW"), CFG, NOW).wanted[
        0
    ].value_w == pytest.approx(9e6)
    m = map_event(event([("IMPORT_CAPACITY_LIMIT", 9)], units="KWH"), CFG, NOW)
    assert not m.wanted and m.refused[0].reason == "bad_units"


def test_simple_levels_follow_the_site_table_and_alerts_take_the_strictest():
    m = map_event(event([("SIMPLE", 0), ("SIMPLE", 1), ("SIMPLE", 2)], units=None), CFG, NOW)
    assert [(w.kind, w.value_w) for w in m.wanted] == [("shed", 1e6), ("import_cap", 8e6)]
    alert = map_event(event([("ALERT_GRID_EMERGENCY", 1)], units=None), CFG, NOW)
    assert [(w.kind, w.value_w, w.signal) for w in alert.wanted] == [
        ("import_cap", 6e6, "ALERT_GRID_EMERGENCY")
    ]
    bare = OpenADRConfig()
    assert map_event(event([("SIMPLE", 2)], units=None), bare, NOW).refused[0].reason == "no_rule"


def test_prices_are_recorded_and_act_only_through_a_rule():
    m = map_event(event([("PRICE", 0.2), ("PRICE", 0.7), ("PRICE", 1.4)], units=None), CFG, NOW)
    assert [p.value for p in m.prices] == [0.2, 0.7, 1.4]
    assert [(w.kind, w.value_w, w.ref) for w in m.wanted] == [
        ("shed", 2e6, "ev-1/1"),
        ("import_cap", 7e6, "ev-1/2"),
    ]
    assert not map_event(event([("PRICE", 5.0)], units=None), OpenADRConfig(), NOW).wanted


@pytest.mark.parametrize(
    ("payloads", "kwargs", "reason"),
    [
        ([("IMPORT_CAPACITY_LIMIT", -5000)], {}, "out_of_range"),  # a cap of −5 MW
        ([("IMPORT_CAPACITY_LIMIT", 0.5)], {}, "out_of_range"),  # 500 W: below 1 kW
        ([("SIMPLE", 7)], {"units": None}, "out_of_range"),
        ([("SIMPLE", 1.5)], {"units": None}, "out_of_range"),
        ([("GHG", 3)], {"units": None}, "unknown_signal"),
        ([("SOMETHING_NEW", 3)], {"units": None}, "unknown_signal"),
        ([("IMPORT_CAPACITY_LIMIT", "lots")], {}, "bad_value"),
        ([("IMPORT_CAPACITY_LIMIT", 8000)], {"duration": "P30D"}, "too_long"),
        ([("IMPORT_CAPACITY_LIMIT", 8000)], {"start_s": NOW - 7200}, "past"),
    ],
)
def test_a_bad_payload_is_refused_with_its_reason_and_asks_nothing(payloads, kwargs, reason):
    m = map_event(event(payloads, **kwargs), CFG, NOW)
    assert not m.wanted
    assert [r.reason for r in m.refused] == [reason]


def test_a_zero_duration_lasts_seven_days_and_past_intervals_are_skipped():
    m = map_event(event([("IMPORT_CAPACITY_LIMIT", 8000)], duration="PT0S"), CFG, NOW)
    assert m.wanted[0].end_s - m.wanted[0].start_s == 7 * 86400
    half = map_event(
        event([("IMPORT_CAPACITY_LIMIT", 9000)] * 2, start_s=NOW - 3700), CFG, NOW
    )  # the first hour is over, the second runs
    assert [w.ref for w in half.wanted] == ["ev-1/1"] and not half.refused


def test_an_event_for_other_vens_is_not_ours():
    targets = [{"type": "VEN_NAME", "values": ["someone-else"]}]
    m = map_event(event([("IMPORT_CAPACITY_LIMIT", 8000)], targets=targets), CFG, NOW)
    assert m == type(m)()
    ours = [{"type": "VEN_NAME", "values": ["gridpilot"]}]
    assert map_event(event([("IMPORT_CAPACITY_LIMIT", 8000)], targets=ours), CFG, NOW).wanted


def _held(w: Any, event_id: int = 1, cancelled: bool = False, **changed: Any) -> Held:
    fields = {
        "ref": w.ref,
        "revision": w.revision,
        "kind": w.kind,
        "value_w": w.value_w,
        "start_s": w.start_s,
        "end_s": w.end_s,
    } | changed
    return Held(event_id, cancelled=cancelled, **fields)


def test_reconcile_adds_new_keeps_same_replaces_changed_and_cancels_removed():
    (w,) = map_event(event([("IMPORT_CAPACITY_LIMIT", 8000)]), CFG, NOW).wanted
    assert reconcile([], [w], NOW).add == (w,)
    assert not reconcile([_held(w)], [w], NOW)
    changed = reconcile([_held(w, revision="older")], [w], NOW)
    assert changed.add == (w,) and changed.cancel == (1,)
    assert reconcile([_held(w, value_w=7e6)], [w], NOW).cancel == (1,)
    gone = reconcile([_held(w)], [], NOW)
    assert gone.cancel == (1,) and not gone.add
    # Over already: nothing to cancel.
    assert not reconcile([_held(w, end_s=NOW - 1)], [], NOW)


def test_an_interval_stored_after_it_began_is_in_force_from_then_and_not_stored_again():
    (w,) = map_event(event([("IMPORT_CAPACITY_LIMIT", 8000)]), CFG, NOW).wanted
    assert not reconcile([_held(w, start_s=w.start_s + 30)], [w], NOW)
    assert reconcile([_held(w, start_s=w.start_s - 30)], [w], NOW).cancel == (1,)


def test_two_asks_in_one_interval_are_two_events():
    body = event([("SIMPLE", 1)], units=None)
    both = body.model_copy(
        update={
            "intervals": (
                body.intervals[0].model_copy(
                    update={
                        "payloads": (
                            *body.intervals[0].payloads,
                            *event([("IMPORT_CAPACITY_LIMIT", 8000)]).intervals[0].payloads,
                        )
                    }
                ),
            )
        }
    )
    refs = [w.ref for w in map_event(both, CFG, NOW).wanted]
    assert refs == ["ev-1/0", "ev-1/0#1"]


def test_an_event_an_operator_cancelled_stays_cancelled_until_the_vtn_changes_it():
    (w,) = map_event(event([("IMPORT_CAPACITY_LIMIT", 8000)]), CFG, NOW).wanted
    assert not reconcile([_held(w, cancelled=True)], [w], NOW)
    newer = map_event(event([("IMPORT_CAPACITY_LIMIT", 7000)], modified_s=NOW - 1), CFG, NOW).wanted
    again = reconcile([_held(w, cancelled=True)], newer, NOW)
    assert again.add == newer and not again.cancel


@pytest.mark.parametrize(
    ("descriptors", "duration", "period_s"),
    [
        (None, "PT1H", 60.0),  # none asked: the site's report_s
        ([{"payloadType": "USAGE", "frequency": 2}], "PT15M", 1800.0),  # every 2 intervals
        ([{"payloadType": "USAGE", "numIntervals": 1}], "PT5M", 300.0),  # as numIntervals
        ([{"payloadType": "USAGE"}], "PT5M", math.inf),  # all intervals: once, at the end
        ([{"payloadType": "USAGE", "frequency": 1}], "PT1S", 5.0),  # never more often than 5 s
        ([{"payloadType": "USAGE", "frequency": 1}], "PT0S", 60.0),  # no length: report_s
    ],
)
def test_reports_come_as_often_as_the_event_asks(descriptors, duration, period_s):
    e = event([("IMPORT_CAPACITY_LIMIT", 8000)], duration=duration, reportDescriptors=descriptors)
    assert report_period_s(e, 60.0) == period_s
