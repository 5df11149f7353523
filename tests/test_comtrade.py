"""A capture exported as COMTRADE, read back by an independent reader (the `comtrade` package):
the same channels, units, sample times, values (within the resolution the .cfg states),
modes, trigger and station; and inputs COMTRADE cannot hold refused with a clear error."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import comtrade
import numpy as np
import pyarrow as pa
import pytest

from controller.recorder.comtrade import MODES, export_comtrade, write_comtrade

T0_S = 1_796_013_000.123456  # 30 Nov 2026, 04:30:00.123456 UTC
TRIGGER_S = T0_S + 30.0


def capture(rows: int = 300) -> pa.Table:
    """Ticks at 0.1 s with jitter and one missed tick; a frequency dip; NaNs; a mode change
    (the first `rows` of 300)."""
    return full_capture().slice(0, rows)


def full_capture(rows: int = 300) -> pa.Table:
    rng = np.random.default_rng(15)
    times_s = T0_S + 0.1 * np.arange(rows + 1) + rng.uniform(-0.004, 0.004, rows + 1)
    times_s = np.delete(times_s, 120)  # a tick that never ran
    it_w = 3.2e6 + 7.1e6 * (np.arange(rows) % 20 < 10) + rng.normal(0, 1e4, rows)
    grid_w = 6.2e6 + np.cumsum(rng.normal(0, 2e3, rows))
    grid_w[[5, 6, 200]] = np.nan  # the meter unread on those ticks
    frequency_hz = 50.0 - 0.3 * np.exp(-(((np.arange(rows) - 150) / 20.0) ** 2))
    soc = np.linspace(0.61, 0.58, rows)
    modes = ["auto"] * 150 + ["safe"] * 50 + ["degraded"] * 90 + [None] * 5 + ["manual"] * 5
    return pa.table(
        {
            "time_s": times_s,
            "seq": np.arange(rows, dtype=np.int64) + 7000,
            "mode": modes,
            "it_w": it_w,
            "grid_w": grid_w,
            "frequency_hz": frequency_hz,
            "ramp_up_w_per_s": np.full(rows, 5e5),  # constant: exact
            "import_cap_w": np.full(rows, np.nan),  # no cap in force all along
            "capacity_wh": np.full(rows, 4.0e6),
            "lateness_s": rng.uniform(0, 0.004, rows),
            "ups-a.power_w": it_w / 2,
            "ups-a.soc": soc,
        }
    )


def read_back(tmp_path: Path, table: pa.Table) -> comtrade.Comtrade:
    export = export_comtrade(
        table, station="demo", device="gridpilot", trigger_s=TRIGGER_S, nominal_hz=50
    )
    cfg_path, dat_path = write_comtrade(export, tmp_path / "captures", "20261130T043000Z")
    assert [p.name for p in sorted((tmp_path / "captures").iterdir())] == [
        "20261130T043000Z.cfg",
        "20261130T043000Z.dat",
    ]
    for path in (cfg_path, dat_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # double precision: the reader's default float32 holds neither µs at 30 s nor 1 W at 10 MW
    record = comtrade.Comtrade(use_double_precision=True, use_numpy_arrays=True)
    record.load(str(cfg_path), str(dat_path))
    return record


def unix_s(moment: datetime) -> float:
    """The reader's naive datetimes are the .cfg's times, which are UTC."""
    return moment.replace(tzinfo=UTC).timestamp()


def test_an_independent_reader_gets_the_capture_back(tmp_path: Path):
    table = capture()
    record = read_back(tmp_path, table)

    header = (record.station_name, record.rec_dev_id, record.rev_year)
    assert header == ("demo", "gridpilot", "1999")
    assert record.frequency == 50
    signals = table.column_names[3:]
    assert record.analog_channel_ids == signals
    units = [channel.uu for channel in record.cfg.analog_channels]
    assert units == ["W", "W", "Hz", "W/s", "W", "Wh", "s", "W", "pu"]
    assert [c.ccbm for c in record.cfg.analog_channels][-2:] == ["ups-a", "ups-a"]

    # the true tick times, jitter and the missed tick included, to the µs
    times_s = table.column("time_s").to_numpy()
    assert record.cfg.timestamp_critical
    assert unix_s(record.start_timestamp) == pytest.approx(times_s[0], abs=1e-6)
    assert np.abs(unix_s(record.start_timestamp) + record.time - times_s).max() <= 1e-6
    assert unix_s(record.trigger_timestamp) == pytest.approx(TRIGGER_S, abs=1e-6)
    assert record.trigger_time == pytest.approx(TRIGGER_S - times_s[0], abs=1e-6)

    for channel, values, name in zip(
        record.cfg.analog_channels, record.analog, signals, strict=True
    ):
        original = table.column(name).to_numpy()
        assert np.array_equal(np.isnan(values), np.isnan(original)), name
        known = ~np.isnan(original)
        if known.any() and np.ptp(original[known]) > 0:  # a varying channel uses the whole range
            assert (channel.cmin, channel.cmax) == (-99_999, 99_998), name
            assert channel.a == pytest.approx(np.ptp(original[known]) / 199_997)
        error = np.abs(values[known] - original[known])
        assert (error <= channel.a / 2 + 1e-12 * np.abs(original[known])).all(), name

    assert record.status_channel_ids == [f"mode_{mode}" for mode in MODES]
    modes = table.column("mode").to_pylist()
    for mode, values in zip(MODES, record.status, strict=True):
        assert list(values) == [int(m == mode) for m in modes], mode


def test_resolution_is_fine_for_the_site(tmp_path: Path):
    """What the .cfg states: ~50 W over the IT load's 7 MW swing, 1.5e-7 over the SoC's range."""
    record = read_back(tmp_path, capture())
    resolution = {c.name: c.a for c in record.cfg.analog_channels}
    assert resolution["it_w"] < 60
    assert resolution["ups-a.soc"] < 2e-7
    assert resolution["frequency_hz"] < 2e-6


def test_rewriting_a_capture_replaces_it(tmp_path: Path):
    export = export_comtrade(
        capture(50), station="demo", device="gridpilot", trigger_s=TRIGGER_S, nominal_hz=60
    )
    write_comtrade(export, tmp_path, "c")
    cfg_path, _ = write_comtrade(export, tmp_path, "c")
    assert cfg_path.read_bytes() == export.cfg.encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.cfg", "c.dat"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.slice(0, 0), "no rows"),
        (lambda t: t.drop_columns(["time_s"]), "no time_s column"),
        (lambda t: t.drop_columns(["mode"]), "no mode column"),
        (lambda t: t.append_column("speed", pa.array(np.ones(t.num_rows))), "'speed': no unit"),
        (lambda t: t.append_column("a,b_w", pa.array(np.ones(t.num_rows))), "without commas"),
        (lambda t: t.take(np.r_[0:10, 9:20]), "not increasing at row 10"),
        (lambda t: t.set_column(0, "time_s", pa.array(np.r_[np.nan, np.ones(19)])), "row 0"),
    ],
)
def test_a_table_comtrade_cannot_hold_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        export_comtrade(
            change(capture(20)), station="demo", device="gridpilot", trigger_s=T0_S, nominal_hz=50
        )


def test_bad_names_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="station 'Frankfurt, DE'"):
        export_comtrade(
            capture(5), station="Frankfurt, DE", device="gridpilot", trigger_s=T0_S, nominal_hz=50
        )
    export = export_comtrade(
        capture(5), station="demo", device="gridpilot", trigger_s=T0_S, nominal_hz=50
    )
    for stem in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="plain name"):
            write_comtrade(export, tmp_path, stem)
