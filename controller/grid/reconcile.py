"""What to change so that gridpilot's VTN events are what the VTN now asks. Pure: the events
held (from the store) and the asks (from `mapping`) in; the events to add and to cancel out.

- an ask not held → added;
- an ask held at another version, or with other figures → the held one cancelled, the ask
  added (a running event changed at the VTN ends now and its new version starts now);
- a held event the VTN no longer asks (the event or its interval deleted) → cancelled;
- an event an operator cancelled here stays cancelled until the VTN changes it (a new
  version): the site opted out of that version.
Reconciled only after a complete, successful read of the VTN: through an outage the events
already received stay in force until they end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controller.grid.mapping import Wanted


@dataclass(frozen=True)
class Held:
    """A VTN event as gridpilot stores it."""

    id: int
    ref: str
    revision: str
    kind: str
    value_w: float
    start_s: float
    end_s: float
    cancelled: bool


@dataclass(frozen=True)
class Changes:
    add: tuple[Wanted, ...] = ()
    cancel: tuple[int, ...] = ()  # gridpilot event ids

    def __bool__(self) -> bool:
        return bool(self.add or self.cancel)


def _same(h: Held, w: Wanted) -> bool:
    """The same version and figures; a stored start later than asked is the same (an
    interval stored while it ran is in force from when it was stored)."""
    figures = (h.kind, h.value_w, h.end_s) == (w.kind, w.value_w, w.end_s)
    return h.revision == w.revision and figures and h.start_s >= w.start_s


def reconcile(held: Iterable[Held], wanted: Iterable[Wanted], now_s: float) -> Changes:
    asks = {w.ref: w for w in wanted if w.end_s > now_s}
    by_ref: dict[str, list[Held]] = {}
    for h in held:
        by_ref.setdefault(h.ref, []).append(h)
    add: list[Wanted] = []
    cancel: list[int] = []
    for ref, ask in asks.items():
        versions = by_ref.get(ref, [])
        if any(_same(h, ask) for h in versions):
            continue  # in force, or cancelled here at this version
        cancel += [h.id for h in versions if not h.cancelled and h.end_s > now_s]
        add.append(ask)
    for ref, versions in by_ref.items():
        if ref not in asks:
            cancel += [h.id for h in versions if not h.cancelled and h.end_s > now_s]
    return Changes(tuple(add), tuple(sorted(set(cancel))))
