"""The compliance report: a known sine in the right band with the right energy, the same figures
streamed in chunks as in one, the replay's own figures on a replayed trace, limits broken and
held, bad profiles named by file and field, and an HTML page that fetches nothing."""

from __future__ import annotations

import math
import re
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from controller.dispatch import core
from controller.replay.figures import band_energy
from controller.replay.run import ReplaySettings, simulate
from controller.replay.trace import read_trace
from controller.report.figures import build_report, report_columns
from controller.report.html import render_html
from controller.report.profile import (
    BUILTIN,
    Profile,
    ProfileError,
    builtin_profile,
    load_profile,
)

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT / "drivers" / "sim" / "traces" / "h200_train_1p7b.csv"
DT = 0.1
T0 = 1.8e9  # 2027-01-15, unix s
META = {
    "format": 1,
    "site": "demo",
    "period_s": DT,
    "frequency": {"nominal_hz": 50, "droop": 0.05, "deadband_hz": 0.015, "full_response_w": 1e6},
    "assets": {"ups-a": "ups", "bess-1": "bess"},
}
LOOSE = Profile(name="loose")  # no limits: figures only


def table(n: int, **columns: np.ndarray) -> pa.Table:
    """n ticks of the recorder's rows from T0; columns not given are NaN (unknown)."""
    base = {"time_s": T0 + np.arange(n) * DT, "seq": np.arange(n), "mode": ["auto"] * n}
    return pa.table(base | columns)


def pieces(t: pa.Table, cuts: list[int]) -> list[pa.Table]:
    """The table in chunks, cut at these rows (as partitions would cut it)."""
    edges = [0, *cuts, t.num_rows]
    return [t.slice(a, b - a) for a, b in pairwise(edges)]


def assert_close(a: Any, b: Any, where: str = "report") -> None:
    """Equal, floats to a billionth."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def band(report: dict, name: str) -> dict:
    return next(b for b in report["spectrum"]["bands"] if b["name"] == name)


def check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


def test_a_1hz_sine_shows_in_its_bands_with_its_energy():
    n, amplitude_w = 4000, 3e5  # 400 s: nine Welch segments of 40 s
    t = np.arange(n) * DT
    grid = 5e6 + amplitude_w * np.sin(2 * np.pi * 1.0 * t)
    profile = Profile(
        name="bands",
        bands=[
            {"name": "below", "low_hz": 0.1, "high_hz": 0.5},
            {"name": "above", "low_hz": 2.0, "high_hz": 20.0},
        ],
    )
    report = build_report(pieces(table(n, grid_w=grid, it_w=grid), [999, 2500]), META, profile)
    variance_w2 = amplitude_w**2 / 2
    for name in ("0.1-20 Hz", "0.2-3 Hz"):
        b = band(report, name)
        assert b["grid_rms_w"] ** 2 == pytest.approx(variance_w2, rel=0.01)
        assert b["grid_share_ratio"] > 0.999
        assert b["attenuation_db"] == pytest.approx(0.0, abs=1e-9)  # grid and IT alike
    for name in ("below", "above"):
        assert band(report, name)["grid_share_ratio"] < 1e-6
    assert band(report, "0.1-20 Hz")["high_hz"] == 5.0  # Nyquist at 10 Hz


def site_run(n: int = 6000, step_w: float = 0.0) -> pa.Table:
    """Ten minutes of a site: a training load swinging at 0.5 Hz, a smoothed grid, a dip to
    49.8 Hz answered by the droop, an import cap, a missed tick and an unknown reading; the
    grid steps by `step_w` at 160 s."""
    rng = np.random.default_rng(15)
    t = np.arange(n) * DT
    it = 8e6 + 1e6 * np.sign(np.sin(2 * np.pi * 0.5 * t)) + rng.normal(0, 2e4, n)
    grid = 8e6 + 2e5 * np.sin(2 * np.pi * t / 300) + rng.normal(0, 1e3, n)
    f = 50 + rng.normal(0, 0.003, n)
    f[(t >= 200) & (t < 230)] = 49.8
    droop = META["frequency"]
    expected = np.clip((np.abs(f - 50) - droop["deadband_hz"]) / (droop["droop"] * 50), 0, 1)
    cap = np.where((t >= 400) & (t < 450), 8.05e6, np.nan)
    grid[1500] = np.nan
    grid[t >= 160] += step_w
    columns = {
        "it_w": it,
        "grid_w": grid,
        "battery_w": it - grid,
        "frequency_hz": f,
        "frequency_response_w": expected * droop["full_response_w"],
        "unserved_w": np.where(t > 590, 1e5, 0.0),
        "import_cap_w": cap,
        "capacity_wh": np.full(n, 9.5e6),
        "ups-a.soc": 0.6 - t * 1e-4,
        "bess-1.soc": np.full(n, 0.55),
    }
    keep = np.ones(n, bool)
    keep[1234] = False  # a missed tick
    return table(n, **columns).filter(pa.array(keep))


def test_streamed_in_chunks_the_figures_are_those_of_one_chunk():
    rows = site_run()
    whole = build_report([rows], META, builtin_profile("generic"), plots=True)
    # Cuts inside the frequency dip (t = 200–230 s), the cap (400–450 s) and a Welch segment.
    chunked = build_report(
        pieces(rows, [1000, 2100, 2150, 4200, 4400, 5999]),
        META,
        builtin_profile("generic"),
        plots=True,
    )
    assert_close(chunked, whole)
    (event,) = whole["events"]["frequency"]
    assert event["direction"] == "under"
    assert event["extreme_hz"] == pytest.approx(49.8)
    assert event["response_time_s"] == 0.0
    assert event["delivered_ratio"] == pytest.approx(1.0)
    (cap,) = whole["events"]["import_caps"]
    assert cap["cap_w"] == 8.05e6
    assert cap["end_s"] - cap["start_s"] == pytest.approx(50.0)
    spectrum = whole["spectrum"]
    assert (spectrum["filled_samples"], spectrum["gaps"]) == (2, 0)  # the missed tick, the NaN
    assert whole["range"]["rows"] == 5999
    assert whole["range"]["missing_rows"] == 1
    assert whole["battery"]["soc"]["ups-a"]["max_ratio"] == pytest.approx(0.6)
    assert whole["battery"]["unserved_kwh"] == pytest.approx(1e5 * 99 * DT / 3.6e6)  # t > 590 s


def test_on_a_replayed_trace_the_figures_are_the_replays():
    trace = read_trace(TRAINING)
    settings = ReplaySettings()
    load = np.tile(trace.site_load_w(settings.gpus, settings.base_w), 2)
    dt = trace.dt_s
    run = simulate(load, dt, settings)
    grid, battery = run.out[:, core.O_GRID], run.out[:, core.O_BATTERY]
    n = len(load)
    rows = pa.table(
        {
            "time_s": np.arange(n) * dt,
            "it_w": load,
            "grid_w": grid,
            "battery_w": battery,
            "unserved_w": run.out[:, core.O_UNSERVED],
            "capacity_wh": np.full(n, settings.battery_wh),
        }
    )
    meta = {"format": 1, "period_s": dt}
    report = build_report(pieces(rows, [300, 700, 1200]), meta, LOOSE)
    oscillation = band(report, "0.1-20 Hz")
    assert oscillation["grid_psd_sum_w2_per_hz"] == pytest.approx(band_energy(grid, dt), rel=1e-9)
    assert oscillation["it_psd_sum_w2_per_hz"] == pytest.approx(band_energy(load, dt), rel=1e-9)
    assert oscillation["attenuation_db"] == pytest.approx(run.figures.band_attenuation_db)
    training = band(report, "0.2-3 Hz")
    assert training["grid_psd_sum_w2_per_hz"] == pytest.approx(
        band_energy(grid, dt, (0.2, 3.0)), rel=1e-9
    )
    ramp_100ms = report["ramp"][0]
    assert ramp_100ms["pairs"] == n - 1
    assert ramp_100ms["max_w"] == pytest.approx(run.figures.grid_max_ramp_w_per_s * dt, rel=1e-9)
    battery_figures = report["battery"]
    assert battery_figures["throughput_kwh"] == pytest.approx(
        run.figures.battery_throughput_kwh, rel=1e-9
    )
    assert battery_figures["unserved_kwh"] == pytest.approx(run.figures.unserved_kwh, abs=1e-12)
    assert battery_figures["equivalent_full_cycles"] == pytest.approx(
        run.figures.battery_throughput_kwh / (2 * settings.battery_wh / 1e3), rel=1e-9
    )
    assert report["events"]["frequency"] is None  # no frequency section: nothing to judge


def test_a_ramp_over_the_limit_fails_and_a_run_within_passes():
    n = 1200
    ramp_w_per_s = 4e5
    calm = 8e6 + ramp_w_per_s * np.minimum(np.arange(n) * DT, 30.0)  # 400 kW/s, then flat
    stepped = calm.copy()
    stepped[700:] += 2e5  # 200 kW in one tick
    profile = builtin_profile("generic")  # 500 kW/s: 50 kW over 0.1 s, 500 kW over 1 s
    passed = build_report([table(n, grid_w=calm)], META, profile)
    failed = build_report(pieces(table(n, grid_w=stepped), [700]), META, profile)
    assert passed["result"] == "pass"
    assert check(passed, "ramp over 0.1 s")["result"] == "pass"
    assert failed["result"] == "fail"
    step = check(failed, "ramp over 0.1 s")
    assert step["result"] == "fail"
    assert step["measured"] == pytest.approx(2e5)
    assert step["held_ratio"] == pytest.approx(1 - 1 / (n - 1))  # one pair of 1199 broke it
    # The 1 s window sees the step too (10 pairs span it), but 200 kW is within its 500 kW.
    assert check(failed, "ramp over 1 s")["result"] == "pass"
    # Held by 99.9 % of the pairs is enough where the profile asks no more.
    lenient = profile.model_copy(update={"required_share_ratio": 0.99})
    assert build_report([table(n, grid_w=stepped)], META, lenient)["result"] == "pass"


def test_missed_ticks_and_gaps_pair_no_wrong_samples():
    n = 1000
    grid = 8e6 + 1e3 * np.arange(n)  # 1 kW a tick, 10 kW a second
    keep = np.ones(n, bool)
    keep[100] = False  # a missed tick: the 0.1 s pairs into and out of it are left out
    keep[500:550] = False  # a 5 s gap: no pair spans it, the spectrum starts afresh after it
    rows = table(n, grid_w=grid, it_w=grid).filter(pa.array(keep))
    report = build_report(pieces(rows, [99, 101, 520]), META, LOOSE)
    by_window = {w["window_s"]: w for w in report["ramp"]}
    assert by_window[0.1]["pairs"] == 99 + 398 + 449  # runs of 100, 399 and 450 samples
    assert by_window[0.1]["max_w"] == pytest.approx(1e3)
    assert by_window[1.0]["max_w"] == pytest.approx(1e4)  # never 60 kW across the gap
    assert by_window[60.0]["pairs"] == 0  # no run is 60 s long
    assert (report["spectrum"]["filled_samples"], report["spectrum"]["gaps"]) == (1, 1)


def test_a_frequency_event_without_response_fails():
    n = 600
    f = np.full(n, 50.0)
    f[100:300] = 49.7
    response = np.where(f < 50, 0.0, 0.0)
    report = build_report(
        [table(n, frequency_hz=f, frequency_response_w=response)], META, builtin_profile("generic")
    )
    timing = check(report, "frequency response time")
    assert timing["result"] == "fail"
    assert "1 of 1 event(s) never reached" in timing["note"]
    assert check(report, "frequency response delivered")["result"] == "fail"


def test_the_response_is_judged_on_the_batteries_measured_power():
    """The setpoint answers at once; the batteries follow 0.5 s later: the report says 0.5 s."""
    n = 600
    f = np.full(n, 50.0)
    f[100:300] = 49.7  # droop 5 % of 50 Hz, 15 mHz deadband: 0.285 / 2.5 of 1 MW expected
    commanded = np.where(f < 50, 0.285 / 2.5 * 1e6, 0.0)
    smoothing = np.full(n, 2e6)  # what the batteries give for the load's swing meanwhile
    measured = smoothing + np.r_[np.zeros(5), commanded[:-5]]  # 5 ticks behind
    rows = table(n, frequency_hz=f, frequency_response_w=commanded,
                 battery_target_w=smoothing + commanded, battery_w=measured)  # fmt: skip
    (event,) = build_report([rows], META, LOOSE)["events"]["frequency"]
    assert event["response_time_s"] == pytest.approx(0.5)
    assert event["delivered_ratio"] == pytest.approx(195 / 200)


def test_a_lost_reading_does_not_split_an_event_and_rows_out_of_order_are_dropped():
    n = 600
    f = np.full(n, 50.0)
    f[100:300] = 49.7
    f[200] = np.nan  # one tick without a reading, mid-event
    rows = table(n, frequency_hz=f, frequency_response_w=np.where(f < 50, 1e6, 0.0))
    (event,) = build_report([rows], META, LOOSE)["events"]["frequency"]
    assert event["extreme_hz"] == pytest.approx(49.7)
    # a wall clock stepped back 2 s at row 400: the 20 rows that repeat earlier times go
    times = rows.column("time_s").to_numpy().copy()
    times[400:] -= 2.0
    stepped = rows.set_column(0, "time_s", pa.array(times))
    report = build_report(pieces(stepped, [410]), META, LOOSE)
    assert report["range"]["out_of_order_rows"] == 20
    assert report["range"]["rows"] == n - 20


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("name: x\nramp_1s_max_w: -5\n", "ramp_1s_max_w: Input should be greater than 0"),
        ("name: x\nbands:\n  - {name: b, low_hz: 3, high_hz: 0.2}\n", "bands.0: Value error"),
        ("name: x\nramp_1s_max: 5\n", "ramp_1s_max: Extra inputs are not permitted"),
        ("name: x\nband_share_max_ratio: 1.5\n", "band_share_max_ratio: Input should be less"),
        ("name: x\nname: y\n", "found the key 'name' twice"),
        ("name: [x\n", "not valid YAML"),
        ("- 1\n", "the file must hold a mapping"),
    ],
)
def test_a_bad_profile_is_refused_naming_file_and_field(tmp_path: Path, text: str, named: str):
    path = tmp_path / "utility.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(path) in str(err.value)
    assert named in str(err.value)


def test_the_shipped_profiles_load():
    for name in BUILTIN:
        profile = builtin_profile(name)
        assert profile.name == name
        assert any((b.low_hz, b.high_hz) == (0.2, 3.0) for b in profile.bands)


def test_the_page_has_its_plots_and_checks_escapes_names_and_fetches_nothing():
    rows = site_run(3000, step_w=2e6)  # over the large-load profile's ramp limits
    meta = META | {"site": "<script>alert(1)</script>"}
    odd = rows.append_column("<b>odd</b>.soc", pa.array(np.full(rows.num_rows, 0.4)))
    report = build_report(
        pieces(odd, [1500]),
        meta,
        builtin_profile("large_load"),
        captures=[{"id": "cap-1", "reason": "<frequency>"}],
        plots=True,
    )
    page = render_html(report)
    assert page.count("<svg") == 4  # load and grid, spectra, ramp histograms, SoC
    for c in report["checks"]:
        assert c["name"].replace("'", "&#x27;") in page
    assert 'class="pass"' in page and 'class="fail"' in page
    assert "<script" not in page and "<b>odd</b>" not in page and "<frequency>" not in page
    assert "&lt;script&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page
    assert not re.search(r"url\(\s*['\"]?(?!#)", page)  # only the SVGs' own clip paths


def test_report_columns_name_each_assets_soc():
    assert report_columns(META)[-2:] == ["ups-a.soc", "bess-1.soc"]
