"""One capture exported as IEEE C37.111 COMTRADE: a `.cfg` and a `.dat` that utility software
(and the independent `comtrade` reader the tests use) loads.

The choices, and why:
- Revision 1999: every COMTRADE tool reads it; 2013 adds nothing a capture needs beyond a line
  saying the times are UTC, and older tools warn on or refuse it. The times are UTC (1999 has no
  field to say so: the README does).
- ASCII `.dat`: readable and diffable by people and site scripts, and its range (-99999 to
  99998, 199,998 steps, about 17.6 bits) is finer than 16-bit binary's. A 90 s capture at 10 Hz
  is a few hundred kB of text.
- Missing values (NaN, ±inf): 99999, the 1999 ASCII marker (the `comtrade` reader turns it back
  into NaN). Hence the data range stops at 99998.
- Scaling: per channel the value is a·n + b with n an integer. The channel's finite min and max
  map to the two ends of the integer range, so the resolution is a = (max - min) / 199,997 and
  every value is within a/2 of the one recorded (e.g. 50 W over a 10 MW range, 5e-6 over a SoC
  range of 1). A constant channel is exact (n = 0, b = the value).
- Timestamps: `nrates = 0` (with `0,<last sample>`), the standard's way of saying the `.dat`'s
  timestamps are the sample times, each the tick's true time in µs after the first sample.
  Ticks are nominally periodic but jitter and may miss one; a declared rate would make readers
  compute evenly spaced times instead (the `comtrade` reader ignores the `.dat`'s timestamps
  whenever a rate is given).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from drivers.private import private_dir, write_private

REVISION = "1999"
CODE_MIN, CODE_MAX = -99_999, 99_998  # the 1999 ASCII data range (99999 is the marker)
MISSING = 99_999  # the 1999 ASCII missing-value marker
MAX_STAMP_US = 9_999_999_999  # the .dat's timestamp holds ten digits: 2.7 h of µs
MAX_NAME = 64  # 1999: names (station, device, channel, component) up to 64 characters
MODES = ("auto", "manual", "safe", "degraded")  # one status channel each: mode_<mode>
NOT_SIGNALS = frozenset({"time_s", "seq"})
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A column's unit from its name's suffix (the project puts units in names). The first match
# wins: longer suffixes come before the ones they end with.
UNITS: tuple[tuple[str, str], ...] = (
    ("_w_per_s", "W/s"),
    ("_wh", "Wh"),
    ("_w", "W"),
    ("_hz", "Hz"),
    ("_s", "s"),
    ("soc", "pu"),  # state of charge, a ratio 0..1
)


@dataclass(frozen=True)
class ComtradeExport:
    cfg: str  # the configuration file's text (ASCII, CR LF line ends)
    dat: bytes  # the ASCII data file


@dataclass(frozen=True)
class _Analog:
    name: str
    unit: str
    component: str  # the asset a per-asset column belongs to, else "site"
    a: float  # value = a·code + b
    b: float
    codes: np.ndarray  # int64, MISSING where unknown


def unit_of(column: str) -> str:
    """The COMTRADE unit of a recorder column, from its name's suffix."""
    for suffix, unit in UNITS:
        if column.endswith(suffix):
            return unit
    known = ", ".join(suffix for suffix, _ in UNITS)
    raise ValueError(f"column {column!r}: no unit for its name's suffix (known: {known})")


def scale(values: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(a, b, codes): integer codes n with a·n + b within a/2 of each finite value, MISSING for
    the others. The finite min and max take the ends of the code range."""
    finite = np.isfinite(values)
    codes = np.full(values.shape, MISSING, dtype=np.int64)
    if not finite.any():
        return 1.0, 0.0, codes
    low, high = float(values[finite].min()), float(values[finite].max())
    if high == low:  # one value: exact, at code 0; a as if the range were ±|value|
        a, b = (abs(low) or 1.0) / CODE_MAX, low
    else:
        a = (high - low) / (CODE_MAX - CODE_MIN)
        b = low - a * CODE_MIN
    codes[finite] = np.clip(np.rint((values[finite] - b) / a), CODE_MIN, CODE_MAX)
    return a, b, codes


def _check_name(what: str, name: str) -> str:
    """A name for a .cfg field: printable ASCII, no comma (the field separator), ≤ 64."""
    if not name.isascii() or not name.isprintable() or "," in name or len(name) > MAX_NAME:
        raise ValueError(
            f"{what} {name!r}: COMTRADE needs printable ASCII without commas, "
            f"at most {MAX_NAME} characters"
        )
    return name


def _floats(table: pa.Table, column: str) -> np.ndarray:
    """A column as float64, nulls as NaN."""
    return np.asarray(table.column(column).to_numpy(), dtype=np.float64)


def _analog(table: pa.Table, column: str) -> _Analog:
    asset, dot, _ = column.rpartition(".")
    a, b, codes = scale(_floats(table, column))
    component = asset if dot else "site"
    return _Analog(_check_name("column", column), unit_of(column), component, a, b, codes)


def _signal_columns(table: pa.Table) -> list[str]:
    """Every float column but the time: the analog channels, in the table's order."""
    return [
        field.name
        for field in table.schema
        if pa.types.is_floating(field.type) and field.name not in NOT_SIGNALS
    ]


def _times_us(table: pa.Table) -> np.ndarray:
    """Each row's time in integer µs since the epoch: finite and strictly increasing."""
    if "time_s" not in table.column_names:
        raise ValueError(f"capture: no time_s column (columns: {', '.join(table.column_names)})")
    times_s = _floats(table, "time_s")
    if not np.isfinite(times_s).all():
        row = int(np.flatnonzero(~np.isfinite(times_s))[0])
        raise ValueError(f"capture: time_s at row {row} is {times_s[row]} (every row needs one)")
    times_us = np.rint(times_s * 1e6).astype(np.int64)  # float64 holds unix µs to 0.25 µs
    steps = np.diff(times_us)
    if (steps <= 0).any():
        row = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise ValueError(
            f"capture: time_s not increasing at row {row} "
            f"({times_s[row - 1]!r} then {times_s[row]!r})"
        )
    if times_us[-1] - times_us[0] > MAX_STAMP_US:
        raise ValueError(
            f"capture: {(times_us[-1] - times_us[0]) / 1e6:.0f} s long, "
            f"beyond the {MAX_STAMP_US / 1e6:.0f} s the .dat's timestamps hold"
        )
    return times_us


def _modes(table: pa.Table) -> list[np.ndarray]:
    """One 0/1 column per mode (an unknown mode or a null: all 0)."""
    if "mode" not in table.column_names:
        raise ValueError(f"capture: no mode column (columns: {', '.join(table.column_names)})")
    modes = np.array(table.column("mode").to_pylist(), dtype=object)
    return [(modes == mode).astype(np.int64) for mode in MODES]


def _stamp(us: int) -> str:
    """dd/mm/yyyy,hh:mm:ss.ssssss, UTC, from µs since the epoch (exact, no float)."""
    try:
        return (EPOCH + timedelta(microseconds=us)).strftime("%d/%m/%Y,%H:%M:%S.%f")
    except OverflowError:
        raise ValueError(f"capture: time {us / 1e6!r} (unix s) is beyond a date") from None


def _analog_line(number: int, channel: _Analog) -> str:
    """An,ch_id,ph,ccbm,uu,a,b,skew,min,max,primary,secondary,PS: values are primary units.
    a and b in repr: the shortest text that reads back as the same float64."""
    known = channel.codes[channel.codes != MISSING]
    low, high = (int(known.min()), int(known.max())) if known.size else (CODE_MIN, CODE_MAX)
    return (
        f"{number},{channel.name},,{channel.component},{channel.unit},"
        f"{channel.a!r},{channel.b!r},0,{low},{high},1,1,P"
    )


def _cfg(
    station: str,
    device: str,
    analogs: list[_Analog],
    times_us: np.ndarray,
    trigger_us: int,
    nominal_hz: float,
) -> str:
    lines = [
        f"{station},{device},{REVISION}",
        f"{len(analogs) + len(MODES)},{len(analogs)}A,{len(MODES)}D",
        *(_analog_line(n, channel) for n, channel in enumerate(analogs, start=1)),
        *(f"{n},mode_{mode},,site,0" for n, mode in enumerate(MODES, start=1)),
        f"{nominal_hz:g}",
        "0",  # nrates 0: the .dat's timestamps are the sample times
        f"0,{len(times_us)}",
        _stamp(int(times_us[0])),
        _stamp(trigger_us),
        "ASCII",
        "1",  # timemult: the timestamps are in µs as they stand
    ]
    return "\r\n".join(lines) + "\r\n"


def _dat(analogs: list[_Analog], modes: list[np.ndarray], times_us: np.ndarray) -> bytes:
    """n,timestamp,A1..Ak,D1..Dm per row; the timestamp in µs after the first sample."""
    rows = np.column_stack(
        [
            np.arange(1, len(times_us) + 1, dtype=np.int64),
            times_us - times_us[0],
            *(channel.codes for channel in analogs),
            *modes,
        ]
    )
    text = io.StringIO()
    np.savetxt(text, rows, fmt="%d", delimiter=",", newline="\r\n")
    return text.getvalue().encode("ascii")


def export_comtrade(
    table: pa.Table, *, station: str, device: str, trigger_s: float, nominal_hz: float
) -> ComtradeExport:
    """A capture's rows (the recorder's columns: time_s, seq, mode, float signals) as COMTRADE:
    every float column but time_s an analog channel, each mode a status channel, the trigger at
    `trigger_s` (unix s). ValueError, saying what, for a table COMTRADE cannot hold."""
    if table.num_rows == 0:
        raise ValueError("capture: the table has no rows")
    if not math.isfinite(trigger_s):
        raise ValueError(f"capture: trigger time {trigger_s!r} is not a time")
    if not (math.isfinite(nominal_hz) and nominal_hz > 0):
        raise ValueError(f"capture: nominal frequency {nominal_hz!r} Hz is not a frequency")
    _check_name("station", station)
    _check_name("recording device", device)
    times_us = _times_us(table)
    analogs = [_analog(table, column) for column in _signal_columns(table)]
    modes = _modes(table)
    trigger_us = round(trigger_s * 1e6)
    return ComtradeExport(
        cfg=_cfg(station, device, analogs, times_us, trigger_us, nominal_hz),
        dat=_dat(analogs, modes, times_us),
    )


def _replace_private(path: Path, data: bytes) -> None:
    """`data` into `path` whole or not at all: written 0600 beside it, then renamed over it."""
    part = path.with_name(f".{path.name}.part")
    write_private(part, data)
    os.replace(part, path)


def write_comtrade(export: ComtradeExport, folder: Path, stem: str) -> tuple[Path, Path]:
    """`<stem>.cfg` and `<stem>.dat` in `folder` (made 0700 if new), each 0600. The .dat is
    written first, each file whole: a .cfg that is there has its whole .dat beside it, so a
    collector that looks for .cfg files never takes half a capture."""
    if not stem or stem.startswith(".") or Path(stem).name != stem or "\\" in stem:
        raise ValueError(f"capture file name {stem!r}: a plain name is needed (no folder, no dot)")
    private_dir(folder)
    cfg_path, dat_path = folder / f"{stem}.cfg", folder / f"{stem}.dat"
    _replace_private(dat_path, export.dat)
    _replace_private(cfg_path, export.cfg.encode("ascii"))
    return cfg_path, dat_path
