"""The VEN's state as every reader sees it: one immutable record, swapped whole after each
exchange with the VTN; the tick copies the newest into its record, and state, metrics and
alarms read it there."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from controller.grid.mapping import Price

EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True)
class VenStatus:
    vtn_url: str
    ven_name: str
    alarm_after_s: float
    ven_id: str | None = None  # the VTN's id of this VEN, once registered
    reachable: bool | None = None  # None: not asked yet
    last_ok_s: float | None = None  # unix s of the last complete exchange
    out_since_s: float | None = None  # unix s the VTN first failed, while it does
    last_error: str | None = None  # the kind of the newest failure (a bounded word)
    events_in_force: int = 0  # VTN events planned or running here
    programs: tuple[str, ...] = ()  # names of the programs followed
    prices: tuple[Price, ...] = ()  # the prices the VTN tells, not yet over
    reports_sent: int = 0
    errors: Mapping[str, int] = field(default=EMPTY)  # failures by kind, since start
    refused: Mapping[str, int] = field(default=EMPTY)  # payloads refused by reason

    def out_for_s(self, now_s: float) -> float:
        return 0.0 if self.out_since_s is None else max(0.0, now_s - self.out_since_s)

    def alarming(self, now_s: float) -> bool:
        return self.out_since_s is not None and self.out_for_s(now_s) >= self.alarm_after_s

    def failed(self, kind: str, now_s: float) -> VenStatus:
        return replace(
            self,
            reachable=False,
            last_error=kind,
            out_since_s=self.out_since_s if self.out_since_s is not None else now_s,
            errors=_plus(self.errors, kind),
        )

    def counted_error(self, kind: str) -> VenStatus:
        """A failure of our own (not the VTN's): counted, the VTN's state left as it is."""
        return replace(self, errors=_plus(self.errors, kind))

    def counted_refusals(self, reasons: list[str]) -> VenStatus:
        counts = self.refused
        for reason in reasons:
            counts = _plus(counts, reason)
        return replace(self, refused=counts)

    def price_now(self, now_s: float) -> Price | None:
        return next((p for p in self.prices if p.start_s <= now_s < p.end_s), None)

    def to_json(self, now_s: float) -> dict[str, Any]:
        price = self.price_now(now_s)
        return {
            "vtn_url": self.vtn_url,
            "ven_name": self.ven_name,
            "ven_id": self.ven_id,
            "reachable": self.reachable,
            "last_ok_s": self.last_ok_s,
            "out_for_s": self.out_for_s(now_s),
            "last_error": self.last_error,
            "programs": list(self.programs),
            "events_in_force": self.events_in_force,
            "price": None
            if price is None
            else {
                "value": price.value,
                "currency": price.currency,
                "units": price.units,
                "until_s": price.end_s,
            },
            "reports_sent": self.reports_sent,
            "errors": dict(self.errors),
            "refused": dict(self.refused),
        }


def _plus(counts: Mapping[str, int], key: str) -> Mapping[str, int]:
    return MappingProxyType({**counts, key: counts.get(key, 0) + 1})
