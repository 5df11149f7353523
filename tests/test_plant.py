"""The simulated plant's physics: what the controller's commands do to it."""

from __future__ import annotations

import pytest

from drivers.sim.plant import (
    HEARTBEAT_LOST,
    Battery,
    BessModel,
    CduModel,
    Heartbeat,
    MeterModel,
    UpsModel,
)

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
    u.write("input_power_limit_w", 3e6)
    u.step(4e6, DT)
    assert u.input_w == 3e6 and u.battery_w == pytest.approx(1e6)
    soc = u.battery.soc
    u.step(2e6, DT)  # load below the limit: the rectifier recharges the battery
    assert u.input_w == 3e6 and u.battery_w == pytest.approx(-1e6)
    assert u.battery.soc > soc


def test_ups_limits_follow_charger_rating_and_state_of_charge():
    u = ups()
    u.write("heartbeat", 1)
    u.write("input_power_limit_w", 12e6)
    u.step(2e6, DT)
    assert u.input_w == pytest.approx(2e6 + 5e6)  # max_charge_w
    empty = ups(soc=0.0)
    empty.write("heartbeat", 1)
    empty.write("input_power_limit_w", 0.0)
    empty.step(4e6, DT)
    assert empty.input_w == pytest.approx(4e6)  # nothing left to discharge


def test_ups_reverts_when_the_heartbeat_stops():
    u = ups()
    u.write("heartbeat", 1)
    u.write("input_power_limit_w", 3e6)
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
    b.write("w_set", 2e6)
    b.step(DT)
    assert b.w == 0.0  # not enabled
    b.write("w_set_ena", 1)
    b.write("heartbeat", 7)
    b.step(DT)
    assert b.w == 2e6
    b.write("w_set", 9e6)
    b.step(DT)
    assert b.w == 4e6  # WMaxRtg
    for _ in range(int(2.5 / DT)):
        b.step(DT)
    assert b.w == 0.0 and b.alarms & HEARTBEAT_LOST


def test_cdu_return_carries_the_heat_and_pump_power_is_cubic():
    c = CduModel()
    c.step(10e6, DT)
    p = c.points()
    flow_heat_capacity = p["flow_m3_per_s"] * 4.18e6
    assert (
        p["return_temperature_c"] - p["supply_temperature_c"]
    ) * flow_heat_capacity == pytest.approx(8e6)
    c.write("pump_speed_setpoint_ratio", 0.5)
    assert c.pump_power_w == pytest.approx(c.pump_power_max_w / 8)


def test_meter_averages_over_its_window():
    m = MeterModel(50.0, window_s=0.2)
    for _ in range(40):
        m.step(1e6, DT)
    for _ in range(10):
        m.step(3e6, DT)
    assert m.active_power_w == pytest.approx(2e6)
    assert 49.9 < m.frequency_hz < 50.1
