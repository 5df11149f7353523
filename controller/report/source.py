"""The report over a data folder: the recorder's rows of a time range (streamed), its meta, and
the captures in that range. One function for the CLI and the API alike."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.recorder.captures import CAPTURES_DIR, list_captures
from controller.recorder.reader import RECORDER_DIR, read_meta, read_tables
from controller.report.figures import build_report, report_columns
from controller.report.profile import BUILTIN, Profile, builtin_profile, load_profile

MAX_CAPTURES_LISTED = 1000


class ReportInputError(ValueError):
    """A time or a range the report cannot take: said plainly, nothing read."""


def parse_time(text: str) -> float:
    """Unix seconds, or ISO 8601 (a time without an offset is UTC)."""
    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ReportInputError(
                f"time {text!r}: give unix seconds or ISO 8601 (2026-11-30T05:00:00Z)"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        value = when.timestamp()
    if not math.isfinite(value) or not 0 <= value < 1e11:
        raise ReportInputError(f"time {text!r}: out of range")
    return value


def check_range(from_s: float | None, to_s: float | None) -> None:
    if from_s is not None and to_s is not None and from_s >= to_s:
        raise ReportInputError(f"from ({from_s}) must be before to ({to_s})")


def profile_named(name_or_path: str) -> Profile:
    """A shipped profile by name (generic, large_load), or a YAML file."""
    return (
        builtin_profile(name_or_path)
        if name_or_path in BUILTIN
        else load_profile(Path(name_or_path))
    )


def report_of(
    data_dir: Path,
    from_s: float | None,
    to_s: float | None,
    profile: Profile,
    plots: bool = False,
) -> dict[str, Any]:
    """The report over `data_dir`'s recorder in [from_s, to_s) (None: from the first row, to
    the last). RecorderDataError when the folder holds no recorder data."""
    check_range(from_s, to_s)
    folder = data_dir / RECORDER_DIR
    meta = read_meta(folder)
    captures = [
        {k: v for k, v in c.items() if k != "requested_by"}  # for the utility: no key names
        for c in list_captures(data_dir / CAPTURES_DIR, MAX_CAPTURES_LISTED)
        if (to_s is None or c["from_s"] < to_s) and (from_s is None or c["to_s"] > from_s)
    ]
    chunks = read_tables(folder, from_s, to_s, columns=report_columns(meta))
    return build_report(chunks, meta, profile, sorted(captures, key=lambda c: c["id"]), plots)
