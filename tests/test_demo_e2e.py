"""End to end: `gridpilot demo` as a user runs it, observed only through its API and /metrics."""

from __future__ import annotations

import shutil
import signal
import socket
import statistics
import subprocess
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from controller.sitefile import load_site
from tests.processes import gridpilot, wait_http
from tests.sites import site_dict

OBSERVE_S = 12.0
DEMO_KEY = "e2e-demo-admin-key-0123456789"  # as an operator would give GRIDPILOT_API_KEY


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """Start the demo, watch it for OBSERVE_S seconds, stop it with SIGINT; yield what it showed."""
    tmp = tmp_path_factory.mktemp("demo")
    site_file = tmp / "site.yaml"
    site_file.write_text(yaml.safe_dump(site_dict(tmp / "data")))
    site = load_site(site_file)
    base = f"http://127.0.0.1:{site.api_port}"
    with gridpilot("demo", "--config", str(site_file), env={"GRIDPILOT_API_KEY": DEMO_KEY}) as proc:
        wait_http(f"{base}/readyz", proc)
        states = []
        end = time.monotonic() + OBSERVE_S
        auth = {"Authorization": f"Bearer {DEMO_KEY}"}
        with httpx.Client(base_url=base, timeout=2.0, headers=auth) as client:
            while time.monotonic() < end:
                states.append(client.get("/v1/state").json())
                time.sleep(0.05)
            metrics = client.get("/metrics").text
            readyz = client.get("/readyz")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    yield {
        "site": site,
        "states": states,
        "metrics": metrics,
        "readyz": readyz,
        "returncode": proc.returncode,
        "stderr": stderr,
        "db": Path(site.data_dir) / "gridpilot.sqlite",
    }


HANDOFF_S = 1.0


def ticks(states: list[dict]) -> list[dict]:
    """One state per tick (the API may be read twice within a tick), in auto mode, from
    HANDOFF_S after the first: until control starts, the grid carries the load's swing, and the
    meter's 200 ms average still holds some of it through the first ticks."""
    seen, out = set(), []
    for s in states:
        if s["mode"] == "auto" and s["tick"]["seq"] not in seen:
            seen.add(s["tick"]["seq"])
            out.append(s)
    if not out:
        return out
    settled = out[0]["tick"]["seq"] + HANDOFF_S / out[0]["tick"]["period_s"]
    return [s for s in out if s["tick"]["seq"] >= settled]


def test_it_load_swings_by_megawatts_and_grid_does_not(demo_run):
    t = ticks(demo_run["states"])
    assert len(t) > 0.6 * OBSERVE_S / demo_run["site"].loop_period_s
    it = [s["measurements"]["it_w"] for s in t]
    grid = [s["measurements"]["grid_w"] for s in t]
    assert max(it) - min(it) > 5e6, "the training trace swings the IT load by > 5 MW"
    it_steps = [abs(b - a) for a, b in pairwise(it)]
    assert max(it_steps) > 3e6, "IT load jumps by megawatts between ticks"
    grid_steps = [abs(b - a) for a, b in pairwise(grid)]
    print(f"largest tick-to-tick step: IT {max(it_steps):.0f} W, grid {max(grid_steps):.0f} W")
    assert max(grid_steps) < 0.05 * max(it_steps)


def test_grid_ramp_stays_within_limit(demo_run):
    """The meter's draw, over every 1 s window, moves no more than the ramp limit allows.

    Tolerance: 10 % of a second's ramp, for the meter's 200 ms averaging window and the few
    milliseconds between the writes of one tick landing on different devices.
    """
    site = demo_run["site"]
    limit = max(site.dispatch.ramp_up_w_per_s, site.dispatch.ramp_down_w_per_s)
    t = ticks(demo_run["states"])
    # On each tick's own clock: a tick skipped under load (an overrun) takes no sequence number,
    # and counting periods would shrink the time the grid had to move.
    samples = [
        (datetime.fromisoformat(s["tick"]["time"]).timestamp(), s["measurements"]["grid_w"])
        for s in t
    ]
    worst = 0.0
    for i, (t0, g0) in enumerate(samples):
        for t1, g1 in samples[i + 1 :]:
            if t1 - t0 >= 1.0:
                worst = max(worst, abs(g1 - g0) / (t1 - t0))
                break
    assert worst <= limit * 1.1, f"grid ramp {worst:.0f} W/s over 1 s beyond {limit:.0f} W/s"

    # The controller's own plan never exceeds the limit, tick to tick.
    def plan(s: dict) -> float:  # frequency response acts outside the ramp limiter, by design
        return s["dispatch"]["grid_target_w"] + s["dispatch"]["frequency_response_w"]

    for a, b in pairwise(t):
        ticks_apart = b["tick"]["seq"] - a["tick"]["seq"]  # the API may be read less often
        step = abs(plan(b) - plan(a))
        assert step <= limit * site.loop_period_s * ticks_apart * 1.000001 + 1.0


def test_battery_covers_the_difference(demo_run):
    """grid + battery = IT + cooling, within 3 % of the IT load at the median tick.

    The meter averages over 200 ms while the UPS and BESS report instantly, so single ticks
    during a multi-MW step differ by more; the median shows the balance.
    """
    t = ticks(demo_run["states"])
    residuals = []
    for s in t:
        m = s["measurements"]
        residuals.append(abs(m["grid_w"] + m["battery_w"] - m["it_w"] - m["cooling_w"]) / m["it_w"])
    assert statistics.median(residuals) < 0.03


def test_metrics_show_the_site(demo_run):
    families = {f.name: f for f in text_string_to_metric_families(demo_run["metrics"])}
    for name in (
        "gridpilot_grid_power_watts",
        "gridpilot_it_power_watts",
        "gridpilot_battery_power_watts",
        "gridpilot_battery_soc_ratio",
        "gridpilot_grid_frequency_hertz",
        "gridpilot_loop_duration_seconds",
    ):
        assert name in families, name
    socs = {s.labels["device"]: s.value for s in families["gridpilot_battery_soc_ratio"].samples}
    assert set(socs) == {"ups-a", "ups-b", "bess-1"}
    assert all(0.0 < v < 1.0 for v in socs.values())
    freq = families["gridpilot_grid_frequency_hertz"].samples[0].value
    assert 49.5 < freq < 50.5
    count = next(
        s.value
        for s in families["gridpilot_loop_duration_seconds"].samples
        if s.name.endswith("_count")
    )
    assert count > 0.6 * OBSERVE_S / demo_run["site"].loop_period_s


def test_metrics_count_energy_and_tokens(demo_run):
    """Energy counters grow with the site's load; the token source (the simulated vLLM
    endpoint) answers, and its tokens are counted."""
    samples = {
        (s.name, s.labels.get("source") or s.labels.get("device")): s.value
        for f in text_string_to_metric_families(demo_run["metrics"])
        for s in f.samples
    }
    it_j = samples[("gridpilot_it_energy_joules_total", None)]
    facility_j = samples[("gridpilot_facility_energy_joules_total", None)]
    assert 0.5 * 3e6 * OBSERVE_S < it_j < facility_j  # at least 3 MW of IT for most of the run
    assert samples[("gridpilot_grid_import_energy_joules_total", None)] > 0
    assert samples[("gridpilot_token_source_up", "vllm-0")] == 1.0
    assert samples[("gridpilot_tokens_generated_total", None)] > 0
    assert samples[("gridpilot_device_poll_duration_seconds_count", "ups-a")] > 0


def test_live_scrape_passes_promtool(demo_run):
    """`promtool check metrics` (Prometheus's own linter) on the live scrape: no warnings."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs it (Debian package prometheus)"
    out = subprocess.run(
        [promtool, "check", "metrics"],
        input=demo_run["metrics"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr


def test_state_reports_each_device_with_ages(demo_run):
    last = demo_run["states"][-1]
    assert demo_run["readyz"].status_code == 200
    assert set(last["devices"]) == {"ups-a", "ups-b", "bess-1", "meter-1", "cdu-1"}
    for dev in last["devices"].values():
        assert dev["connected"]
        for point in dev["points"].values():
            assert point["unit"]
            assert 0.0 <= point["age_s"] < 5.0
    assert last["tick"]["age_s"] < 1.0
    setpoints = last["dispatch"]["asset_setpoints_w"]
    assert set(setpoints) == {"ups-a", "ups-b", "bess-1"}


def test_shutdown_is_clean(demo_run):
    assert demo_run["returncode"] == 0, demo_run["stderr"][-2000:]
    assert "Traceback" not in demo_run["stderr"]
    assert "controller stopped" in demo_run["stderr"]
    site = demo_run["site"]
    for port in [site.api_port] + [d.port for d in site.devices]:
        assert port_closed(port), f"port {port} still open after exit"


def test_a_start_logs_no_fault_and_libraries_stay_quiet(demo_run):
    """Devices connecting at start are no fault; link faults are the drivers' to report;
    token polls are not news."""
    lines = demo_run["stderr"].splitlines()
    assert not [line for line in lines if "control degraded" in line]
    assert not [line for line in lines if "level=warning" in line or "level=error" in line]
    for library in ("logger=pymodbus", "logger=asyncua", "logger=httpx"):
        assert not [line for line in lines if library in line], library


def test_store_kept_samples_and_events(demo_run):
    import sqlite3

    with sqlite3.connect(demo_run["db"]) as conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM events ORDER BY id")]
        samples = conn.execute("SELECT COUNT(*), MIN(it_w), MAX(it_w) FROM samples").fetchone()
    assert kinds[0] == "controller_started" and kinds[-1] == "controller_stopped"
    assert "device_connected" in kinds
    assert samples[0] >= OBSERVE_S - 2
    assert samples[2] > samples[1]


def test_recorder_kept_every_tick_at_the_loops_rate(demo_run):
    from controller.recorder.files import CLOSED, partitions
    from controller.recorder.reader import RECORDER_DIR, read_table

    site = demo_run["site"]
    folder = site.data_dir / RECORDER_DIR
    assert [p.path.suffix for p in partitions(folder)] == [CLOSED]  # compacted at the stop
    table = read_table(folder)
    assert table is not None
    seqs = table.column("seq").to_pylist()
    assert seqs == list(range(1, len(seqs) + 1))  # from the first tick to the last, no gap
    times = table.column("time_s").to_pylist()
    assert len(times) >= OBSERVE_S / site.loop_period_s
    assert max(b - a for a, b in pairwise(times)) < 3 * site.loop_period_s
    seen = {s["tick"]["seq"]: s for s in demo_run["states"]}
    for row in table.to_pylist():  # the rows are what the API showed of the same ticks
        if (state := seen.get(row["seq"])) is not None:
            shown = state["measurements"]["grid_w"]
            assert row["grid_w"] != row["grid_w"] if shown is None else row["grid_w"] == shown
