"""What a VTN's event asks of this site, interval by interval. Pure: an event (the OpenADR
client library's model, 3.0.1 or 3.1.0: the same attribute names) and the site's rules in;
the import caps and sheds it wants, the prices it tells, and what was refused (and why) out.
No clock: `now_s` is given.

- `IMPORT_CAPACITY_LIMIT` → an import cap (its units from the payload descriptor: W, KW or MW;
  KW when none is given, as the specification's examples have it);
- `SIMPLE` level 1–3 → the site's `simple_levels` rule (0: nothing asked);
- a grid alert (`ALERT_GRID_EMERGENCY`, `ALERT_BLACK_START`, `ALERT_POSSIBLE_OUTAGE`,
  `ALERT_FLEX_ALERT`) → the highest level the site has a rule for;
- `PRICE` → recorded; it acts only through a `price_rules` entry;
- anything else is refused with its name, and changes nothing.

Intervals without a period of their own follow the event's, one after another (interval k
starts k durations after the event's start). A duration of 0 (the specification's "until
further notice") lasts the longest an event may, 7 days.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from controller.fields import MAX_POWER_W, MIN_POWER_W
from controller.grid.config import Action, OpenADRConfig
from controller.operations import MAX_EVENT_S

Kind = Literal["import_cap", "shed"]
ALERTS = frozenset(
    {"ALERT_GRID_EMERGENCY", "ALERT_BLACK_START", "ALERT_POSSIBLE_OUTAGE", "ALERT_FLEX_ALERT"}
)
UNITS_W = {"W": 1.0, "KW": 1e3, "MW": 1e6}


@dataclass(frozen=True)
class Wanted:
    """One interval's ask, as a gridpilot event."""

    ref: str  # the VTN's event id / the interval's id: unique, stable across versions
    revision: str  # the event's modification time at the VTN (ISO 8601)
    kind: Kind
    value_w: float
    start_s: float
    end_s: float
    signal: str  # the payload type it came from


@dataclass(frozen=True)
class Refused:
    ref: str
    revision: str
    reason: str  # a bounded word, a metric label
    detail: str  # for the log: which value, which field


@dataclass(frozen=True)
class Price:
    ref: str
    value: float
    currency: str | None
    units: str | None
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Mapped:
    wanted: tuple[Wanted, ...] = ()
    refused: tuple[Refused, ...] = ()
    prices: tuple[Price, ...] = ()


def _name(value: Any) -> str:
    """An enum member's value, or the text itself (the library makes unknown types members)."""
    return str(getattr(value, "value", value))


def _descriptors(event: Any) -> dict[str, Any]:
    return {_name(d.payload_type): d for d in (event.payload_descriptors or ())}


def _period(event: Any, interval: Any, index: int) -> tuple[float, float] | None:
    """The interval's start and end, unix s; None when neither it nor the event has a period."""
    own, default = interval.interval_period, event.interval_period
    period = own or default
    if period is None:
        return None
    duration_s = period.duration.total_seconds()
    start_s = period.start.timestamp() + (index * duration_s if own is None else 0.0)
    if duration_s == 0.0:  # "until further notice"
        duration_s = MAX_EVENT_S
    return start_s, start_s + duration_s


def _number(values: Iterable[Any]) -> float | None:
    first = next(iter(values), None)
    if isinstance(first, bool) or not isinstance(first, int | float):
        return None
    return float(first) if math.isfinite(first) else None


def _for_us(event: Any, ven_name: str) -> bool:
    """3.0.1: targets of type VEN_NAME that do not name this VEN: the event is for others.
    (3.1.0's targets are plain names the VTN itself matches against its VENs' own.)"""
    typed = [t for t in (event.targets or ()) if not isinstance(t, str)]
    names = [t for t in typed if _name(t.type) == "VEN_NAME"]
    return not names or any(ven_name in t.values for t in names)


class _Interval:
    """One interval's payloads turned into asks, with the event's context at hand."""

    def __init__(self, event: Any, cfg: OpenADRConfig, ref: str, span: tuple[float, float]):
        self.cfg, self.ref, self.span = cfg, ref, span
        self.revision = event.modification_date_time.isoformat()
        self.descriptors = _descriptors(event)
        self.out: list[Wanted | Refused | Price] = []

    def refuse(self, reason: str, detail: str) -> None:
        self.out.append(Refused(self.ref, self.revision, reason, detail))

    def want(self, kind: Kind, value_w: float, signal: str) -> None:
        if not MIN_POWER_W <= value_w <= MAX_POWER_W:
            self.refuse("out_of_range", f"{signal} of {value_w:.0f} W is outside 1 kW–10 GW")
            return
        # A second ask in one interval (two signals) is an event of its own: a ref of its own.
        n = sum(isinstance(o, Wanted) for o in self.out)
        ref = self.ref if n == 0 else f"{self.ref}#{n}"
        self.out.append(Wanted(ref, self.revision, kind, value_w, *self.span, signal))

    def act(self, action: Action | None, signal: str, what: str) -> None:
        if action is None:
            self.refuse("no_rule", f"{what}: the site file has no simple_levels rule for it")
        else:
            self.want(*action.event, signal)

    def payload(self, signal: str, value: float) -> None:
        if signal == "IMPORT_CAPACITY_LIMIT":
            units = _name(getattr(self.descriptors.get(signal), "units", None) or "KW").upper()
            if units not in UNITS_W:
                self.refuse("bad_units", f"{signal} in {units}; W, KW or MW expected")
            else:
                self.want("import_cap", value * UNITS_W[units], signal)
        elif signal == "SIMPLE":
            if value != int(value) or not 0 <= value <= 3:
                self.refuse("out_of_range", f"SIMPLE level {value}; 0–3 expected")
            elif value > 0:
                level = int(value)
                self.act(self.cfg.simple_levels.get(level), signal, f"SIMPLE level {level}")
        elif signal in ALERTS:
            self.act(self.cfg.strictest(), signal, signal)
        elif signal == "PRICE":
            self.price(value)
        else:
            self.refuse("unknown_signal", f"{signal} is not a signal gridpilot acts on")

    def price(self, value: float) -> None:
        d = self.descriptors.get("PRICE")
        currency = _name(d.currency) if d is not None and d.currency else None
        units = _name(d.units) if d is not None and d.units else None
        self.out.append(Price(self.ref, value, currency, units, *self.span))
        rules = [r for r in self.cfg.price_rules if value > r.above]
        if rules:  # the highest threshold passed: the strictest rule the price asks for
            self.want(*max(rules, key=lambda r: r.above).event, "PRICE")


def map_event(event: Any, cfg: OpenADRConfig, now_s: float) -> Mapped:
    """Every interval of `event` that has not ended, as asks, prices and refusals."""
    if not _for_us(event, cfg.ven_name):
        return Mapped()
    out: list[Wanted | Refused | Price] = []
    revision = event.modification_date_time.isoformat()
    live = 0
    for index, interval in enumerate(event.intervals):
        ref = f"{event.id}/{interval.id}"
        span = _period(event, interval, index)
        if span is None:
            out.append(Refused(ref, revision, "no_period", "no period, nor one for the event"))
            continue
        if span[1] - span[0] > MAX_EVENT_S:
            detail = f"lasts {span[1] - span[0]:.0f} s; at most {MAX_EVENT_S:.0f} s"
            out.append(Refused(ref, revision, "too_long", detail))
            continue
        if span[1] <= now_s:
            continue  # over: nothing to do (an event wholly past is refused below)
        live += 1
        step = _Interval(event, cfg, ref, span)
        for payload in interval.payloads:
            signal, value = _name(payload.type), _number(payload.values)
            if value is None:
                step.refuse("bad_value", f"{signal} values {list(payload.values)[:3]} not a number")
            else:
                step.payload(signal, value)
        out += step.out
    if live == 0 and event.intervals and not out:
        out.append(Refused(f"{event.id}/*", revision, "past", "every interval has ended"))
    return Mapped(
        wanted=tuple(o for o in out if isinstance(o, Wanted)),
        refused=tuple(o for o in out if isinstance(o, Refused)),
        prices=tuple(o for o in out if isinstance(o, Price)),
    )
