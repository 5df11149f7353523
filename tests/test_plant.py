"""The simulated plant's physics: what the controller's commands do to it."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.sim.load import TraceLoad
from drivers.sim.plant import (
    HEARTBEAT_LOST,
    Battery,
    BessModel,
    CduModel,
    FrequencyExcursion,
    Heartbeat,
    MeterModel,
    UpsModel,
)
from drivers.sim.tokens import MetricsEndpoint, TraceTokens
from tests.sites import free_port

DT = 0.01


def ups(soc: float = 0.5) -> UpsModel:
    return UpsModel(7e6, 5e6, Battery(1.5e6, soc), Heartbeat(2.0))


def test_ups_without_controller_carries_the_load_from_the_grid():
    u = ups()
    u.step(4e6, DT)
    assert u.input_w == 4e6 and u.battery_w == 0.0


def test_ups_input_limit_makes_the_battery_carry_the_rest_and_charge_below_it():
    u = ups()
    u.write("heartbeat", 1)
    u.write("input_limit_w", 3e6)
    u.step(4e6, DT)
    assert u.input_w == 3e6 and u.battery_w == pytest.approx(1e6)
    soc = u.battery.soc
    u.step(2e6, DT)  # load below the limit: the rectifier recharges the battery
    assert u.input_w == 3e6 and u.battery_w == pytest.approx(-1e6)
    assert u.battery.soc > soc


def test_ups_limits_follow_charger_rating_and_state_of_charge():
    u = ups()
    u.write("heartbeat", 1)
    u.write("input_limit_w", 12e6)
    u.step(2e6, DT)
    assert u.input_w == pytest.approx(2e6 + 5e6)  # max_charge_w
    empty = ups(soc=0.0)
    empty.write("heartbeat", 1)
    empty.write("input_limit_w", 0.0)
    empty.step(4e6, DT)
    assert empty.input_w == pytest.approx(4e6)  # nothing left to discharge


def test_ups_reverts_when_the_heartbeat_stops():
    u = ups()
    u.write("heartbeat", 1)
    u.write("input_limit_w", 3e6)
    for _ in range(int(2.5 / DT)):
        u.step(4e6, DT)
    assert u.input_w == 4e6
    assert u.alarms & HEARTBEAT_LOST


def test_battery_energy_with_efficiency():
    b = Battery(capacity_wh=1000.0, soc=0.5, charge_efficiency=0.9, discharge_efficiency=0.8)
    b.apply(1000.0, 3.6)  # 1 Wh out of the terminals costs 1.25 Wh stored
    assert b.soc == pytest.approx(0.5 - 1.25 / 1000)
    b.apply(-1000.0, 3.6)  # 1 Wh in stores 0.9 Wh
    assert b.soc == pytest.approx(0.5 - 1.25 / 1000 + 0.9 / 1000)


def test_bess_follows_setpoint_only_while_enabled_and_watched():
    b = BessModel(4e6, Battery(8e6, 0.5), Heartbeat(2.0))
    b.write("setpoint_w", 2e6)
    b.step(DT)
    assert b.w == 0.0  # not enabled
    b.write("enable", 1)
    b.write("heartbeat", 7)
    b.step(DT)
    assert b.w == 2e6
    b.write("setpoint_w", 9e6)
    b.step(DT)
    assert b.w == 4e6  # WMaxRtg
    for _ in range(int(2.5 / DT)):
        b.step(DT)
    assert b.w == 0.0 and b.alarms & HEARTBEAT_LOST


def test_cdu_return_carries_the_heat_and_pump_power_is_cubic():
    c = CduModel()
    start = c.supply_c
    c.step(10e6, DT)
    flow_heat_capacity = c.points()["flow_m3_per_s"] * 4.18e6
    # The racks still see the supply of before the transport delay: the start's.
    assert (c.racks_return_c - start) * flow_heat_capacity == pytest.approx(8e6)
    for _ in range(int(100 / DT)):  # the return header mixes it in over ~20 s
        c.step(10e6, DT)
    p = c.points()
    delivered = (p["return_c"] - c._supply_at_racks()) * flow_heat_capacity
    assert delivered == pytest.approx(8e6, rel=1e-2)  # the supply moved a little meanwhile
    c.write("pump_setpoint_ratio", 0.5)
    assert c.pump_power_w == pytest.approx(c.pump_power_max_w / 8)


def test_cdu_energy_balances_and_the_supply_lags_by_the_transport_delay():
    """IT heat = rejected + reused + stored, to 0.1 % (here to rounding), over a swinging load,
    a setpoint change and a heat consumer."""
    c = CduModel(reuse_request_w=1.5e6, reuse_min_temperature_c=40.0)
    for k in range(36_000):  # an hour at 0.1 s
        it = 8e6 + 3e6 * ((k // 5) % 2)  # a 1 s square wave: training's swing, slowed
        if k == 12_000:
            c.write("supply_setpoint_c", 36.0)
        c.step(it, 0.1)
    balance = c.rejected_j + c.reused_j + c.stored_j
    assert balance == pytest.approx(c.heat_in_j, rel=1e-9)
    assert c.reused_j > 0 and c.rejected_j > 0
    assert 30.0 < c.supply_c < 40.0


def test_cdu_p_control_leaves_an_offset_that_moves_with_load():
    """The CDU's own valve is proportional: its supply settles off the setpoint, by an amount
    that depends on the load. A supervisor has something to trim."""
    offsets = []
    for it in (4e6, 13e6):
        c = CduModel()
        for _ in range(20_000):
            c.step(it, 0.1)
        offsets.append(c.supply_c - c.supply_setpoint_c)
    assert max(abs(o) for o in offsets) > 0.5 and abs(offsets[1] - offsets[0]) > 0.3


def test_meter_averages_over_its_window():
    m = MeterModel(50.0, window_s=0.2)
    for _ in range(40):
        m.step(1e6, DT)
    for _ in range(10):
        m.step(3e6, DT)
    assert m.active_power_w == pytest.approx(2e6)
    assert 49.9 < m.frequency_hz < 50.1


def test_meter_shows_a_scripted_frequency_dip_and_its_recovery():
    dip = FrequencyExcursion(at_s=1.0, depth_hz=-0.2, fall_s=2.0, hold_s=3.0, recover_s=4.0)
    m = MeterModel(50.0, events=[dip])
    seen = {}
    for k in range(1, 1101):
        m.step(1e6, DT)
        seen[k] = m.frequency_hz
    walk = 0.06  # the random walk's reach over these 11 s, generously
    assert seen[100] == pytest.approx(50.0, abs=walk)  # before
    assert seen[200] == pytest.approx(49.9, abs=walk)  # halfway down
    assert seen[450] == pytest.approx(49.8, abs=walk)  # holding
    assert seen[800] == pytest.approx(49.9, abs=walk)  # halfway back
    assert seen[1100] == pytest.approx(50.0, abs=walk)  # recovered
    assert dip.deviation_hz(4.5) == -0.2 and dip.deviation_hz(0.5) == 0.0


def test_rack_jitter_keeps_the_swing_and_the_energy():
    lockstep = TraceLoad("h200_train_1p7b", 10_000, 2e6)
    racks = TraceLoad("h200_train_1p7b", 10_000, 2e6, racks=100, jitter_s=0.02)
    t = np.arange(0.0, 2 * lockstep.period_s, 0.01)
    a = np.array([lockstep.it_power_w(x) for x in t])
    b = np.array([racks.it_power_w(x) for x in t])
    assert b.mean() == pytest.approx(a.mean(), rel=1e-3)
    assert np.max(np.abs(np.diff(b))) > 3e6  # still megawatts within 10 ms: the grid's problem
    assert not np.array_equal(a, b)


def test_token_counter_follows_the_inference_trace():
    tokens = TraceTokens("h200_infer_llama1p1b", gpus=1000)
    assert tokens.per_period == 85_856  # the trace README's count
    assert tokens.total(0.0) == 0.0
    assert tokens.total(tokens.period_s) == pytest.approx(85_856 * 1000)
    assert tokens.total(2.5 * tokens.period_s) > tokens.total(2 * tokens.period_s)
    samples = [tokens.total(x) for x in np.linspace(0, 3 * tokens.period_s, 500)]
    assert np.all(np.diff(samples) >= 0)  # a counter


async def test_token_endpoint_speaks_prometheus_text():
    """Parsed by prometheus_client's own parser, as a scraper would."""
    endpoint = MetricsEndpoint("127.0.0.1", free_port(), lambda: 1234.0, "llama")
    await endpoint.start()
    try:
        async with httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{endpoint.port}"
            reply = await client.get(f"{url}/metrics")
            missing = await client.get(f"{url}/nothing")
    finally:
        await endpoint.stop()
    assert reply.status_code == 200 and missing.status_code == 404
    (family,) = text_string_to_metric_families(reply.text)
    assert family.name == "vllm:generation_tokens" and family.type == "counter"
    (sample,) = [s for s in family.samples if s.name.endswith("_total")]
    assert sample.value == 1234.0 and sample.labels == {"model_name": "llama"}


def test_the_watchdog_counts_wall_time_like_a_real_device():
    """A plant process frozen for 10 s and thawed: its physics catches up in short steps,
    but the controller's last heartbeat is 10 s old at once, and commands stop counting."""
    wall = [0.0]
    u = UpsModel(7e6, 5e6, Battery(1.5e6, 0.6), Heartbeat(2.0, clock=lambda: wall[0]))
    u.write("heartbeat", 1)
    u.write("input_limit_w", 3e6)
    u.step(4e6, DT)
    assert u.input_w == pytest.approx(3e6)  # the battery carries the rest
    wall[0] += 10.0  # frozen, then thawed: only one short step of physics so far
    u.step(4e6, DT)
    assert u.input_w == pytest.approx(4e6)  # reverted: the input carries the load again
