"""Temporary changes, pure: each is a layer over the permanent value that goes at its own end.

Setpoints and modes are layered alike. What is in force is the permanent value with the layers
still pending over it (the newest wins where two name the same field); every state the value
will pass through as the layers end is checked when a change is made, so a revert never lands
on a value the site would refuse.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from controller.config import SiteConfig
from controller.setpoints import Mode, Setpoints, dispatch_config


@dataclass(frozen=True, eq=False)  # compared by identity: two alike are two changes
class Layer:
    """A temporary change: these values (setpoint fields, or {"mode": ...}), until `expires_s`."""

    changes: dict[str, Any]
    expires_s: float


def pending_after(layers: tuple[Layer, ...], ended_s: float) -> tuple[Layer, ...]:
    """The layers still pending once every one ending by `ended_s` has gone: exactly the
    states checked when the changes were made (one at a time, in another order, could be
    invalid)."""
    return tuple(layer for layer in layers if layer.expires_s > ended_s)


def mode_of(base: Mode, layers: tuple[Layer, ...]) -> Mode:
    """The mode in force: the newest temporary one still pending, else the permanent one."""
    return layers[-1].changes["mode"] if layers else base


def effective(permanent: Setpoints, layers: tuple[Layer, ...]) -> Setpoints:
    """The setpoints in force: the permanent ones, each temporary change over them in turn."""
    merged = permanent.model_dump()
    for layer in layers:
        merged.update(layer.changes)
    return Setpoints(**merged)


def without(layer: Layer, fields: dict[str, Any]) -> Layer:
    """A temporary change less the fields an operator has since set for good."""
    return Layer({k: v for k, v in layer.changes.items() if k not in fields}, layer.expires_s)


def as_saved(layers: tuple[Layer, ...]) -> list[dict[str, Any]]:
    """As stored (and read back with `Layer(**saved)`)."""
    return [asdict(layer) for layer in layers]


def check_future(site: SiteConfig, permanent: Setpoints, layers: tuple[Layer, ...]) -> None:
    """Now and each state the setpoints will pass through as the layers end must be valid as
    a whole; else ValidationError naming the revert that would break it."""
    for when in [-math.inf, *sorted({layer.expires_s for layer in layers})]:
        try:
            dispatch_config(site, effective(permanent, pending_after(layers, when)))
        except ValidationError as exc:
            reasons = "; ".join(e["msg"] for e in exc.errors())
            if math.isfinite(when):
                at = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
                reasons = f"once the temporary change ending at {at} reverts: {reasons}"
            raise ValidationError.from_exception_data(
                "Setpoints",
                [{"type": "value_error", "loc": ("ttl_s",), "input": None,
                  "ctx": {"error": ValueError(reasons)}}],
            ) from None  # fmt: skip
