"""Each limit of a profile against the measured figures: pass, fail, or no_data (nothing in the
range to judge it by, e.g. no frequency event)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from controller.report.profile import Profile

PASS, FAIL, NO_DATA = "pass", "fail", "no_data"


def _check(
    name: str,
    unit: str,
    limit: float,
    measured: float | None,
    passed: bool | None,
    held_ratio: float | None = None,
    required_ratio: float | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "unit": unit,
        "limit": limit,
        "measured": measured,
        "held_ratio": held_ratio,
        "required_ratio": required_ratio,
        "result": NO_DATA if passed is None else PASS if passed else FAIL,
        "note": note,
    }


def ramp_checks(ramp: Sequence[dict[str, Any]], required: float) -> list[dict[str, Any]]:
    """Per window with a limit: the largest change, and the share of pairs within the limit."""
    out = []
    for w in ramp:
        if w["limit_w"] is None:
            continue
        held = w["within_limit_ratio"]
        out.append(
            _check(
                f"ramp over {w['window_s']:g} s",
                "W",
                w["limit_w"],
                w["max_w"],
                None if held is None else held >= required,
                held,
                required,
                None if held is not None else "no pair of samples this far apart",
            )
        )
    return out


def attenuation_check(band: dict[str, Any], limit_db: float | None) -> list[dict[str, Any]]:
    """The smoothing itself: the grid draw's energy in the band against the IT load's."""
    if limit_db is None:
        return []
    measured = band.get("attenuation_db")
    return [
        _check(
            f"attenuation of the IT load in {band['name']}",
            "dB",
            limit_db,
            measured,
            None if measured is None else measured <= limit_db,
            note=None if measured is not None else band.get("note", "too few samples"),
        )
    ]


def band_checks(bands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per band with a limit: the grid draw's share of energy in it."""
    out = []
    for b in bands:
        if b["share_max_ratio"] is None:
            continue
        share = b.get("grid_share_ratio")
        out.append(
            _check(
                f"share of the grid draw's energy in {b['name']}",
                "ratio",
                b["share_max_ratio"],
                share,
                None if share is None else share <= b["share_max_ratio"],
                note=None if share is not None else b.get("note", "too few samples for a spectrum"),
            )
        )
    return out


def _per_event(
    name: str,
    unit: str,
    limit: float,
    values: list[float | None],
    ok: list[bool],
    worst: float | None,
    required: float,
    never: str,
) -> dict[str, Any]:
    if not values:
        return _check(name, unit, limit, None, None, note="no frequency event in the range")
    held = sum(ok) / len(ok)
    missing = values.count(None)
    note = f"{missing} of {len(values)} event(s) {never}" if missing else None
    return _check(name, unit, limit, worst, held >= required, held, required, note)


def response_checks(
    events: Sequence[dict[str, Any]] | None, profile: Profile
) -> list[dict[str, Any]]:
    """Per frequency-response limit: the worst event, and the share of events within it."""
    events = events or []
    out = []
    required = profile.required_share_ratio
    if (limit := profile.frequency_response_time_max_s) is not None:
        times = [e["response_time_s"] for e in events]
        known = [t for t in times if t is not None]
        out.append(
            _per_event(
                "frequency response time",
                "s",
                limit,
                times,
                [t is not None and t <= limit for t in times],
                None if len(known) < len(times) else max(known, default=None),
                required,
                "never reached 90 % of the droop's power",
            )
        )
    if (least := profile.frequency_response_delivered_min_ratio) is not None:
        shares = [e["delivered_ratio"] for e in events]
        known = [s for s in shares if s is not None]
        out.append(
            _per_event(
                "frequency response delivered",
                "ratio",
                least,
                shares,
                [s is not None and s >= least for s in shares],
                min(known, default=None),
                required,
                "had no expected power (never past the deadband by enough)",
            )
        )
    return out


def overall(checks: Sequence[dict[str, Any]]) -> str:
    results = {c["result"] for c in checks}
    if FAIL in results:
        return FAIL
    return PASS if PASS in results else NO_DATA
