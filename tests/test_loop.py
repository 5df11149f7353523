"""The control loop against the simulated plant: commands land, faults degrade safely."""

from __future__ import annotations

import asyncio
import sys
import time
from itertools import pairwise

import pytest

from controller.config import SiteConfig
from controller.loop import ControlLoop
from controller.opsdb import SYSTEM
from controller.record import TickRecord
from controller.service import make_driver
from controller.sitefile import device_maps
from drivers.sim.faults import Fault
from tests.plant import controller_running, modbus_only, until


@pytest.fixture
async def running(site_data: dict):
    """The Modbus plant under a running controller; yields (site, stack, records, controller)."""
    site: SiteConfig = modbus_only(site_data)
    async with controller_running(site) as (stack, records, controller):
        yield site, stack, records, controller


async def test_loop_commands_every_battery_asset(running):
    _, stack, records, _ = running
    await until(lambda: records and records[-1].mode == "auto", 10, "auto mode")
    await asyncio.sleep(1.0)
    last = records[-1]
    assert last.result is not None and set(last.result.asset_w) == {"ups-a", "ups-b", "bess-1"}
    for ups in stack.ups.values():
        assert ups.limit_written and ups.heartbeat.alive(ups.now_s)
    bess = stack.bess["bess-1"]
    assert bess.w_set_ena and bess.heartbeat.alive(bess.now_s)
    assert bess.w_set == pytest.approx(last.result.asset_w["bess-1"], rel=0.5, abs=5e5)
    assert not last.write_errors
    seqs = [r.seq for r in records]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_lost_ups_degrades_control_and_batteries_stand_down(running):
    _, stack, records, _ = running
    await until(lambda: records and records[-1].mode == "auto", 10, "auto mode")
    await stack.stop_device("ups-b")
    await until(lambda: records[-1].mode == "degraded", 5, "degraded mode")
    assert "ups-b.load_w" in records[-1].readings.missing
    assert records[-1].result is None
    await asyncio.sleep(0.5)
    assert stack.bess["bess-1"].w_set == 0.0
    # the reachable UPS's limit is its own measured load (the grid carries it all), and it lands;
    # compared per tick, since the load swings megawatts between one tick's reading and the next
    last_auto = max(i for i, r in enumerate(records) if r.mode == "auto")
    degraded = records[last_auto + 1 :]
    assert degraded and all(r.mode == "degraded" for r in degraded)
    limits = []
    for rec in degraded:
        load = next(b.load_w for b in rec.snapshot.assets.batteries if b.id == "ups-a")
        (limit,) = [
            c.value
            for c in rec.decision.commands
            if c.device == "ups-a" and c.role == "input_limit_w"
        ]
        assert limit == pytest.approx(load)
        limits.append(limit)
    assert stack.ups["ups-a"].input_limit_w in limits[-5:]

    await stack.start_device("ups-b")
    await until(lambda: records[-1].mode == "auto", 15, "auto mode again")


async def test_lost_bess_degrades_control_naming_what_is_missing(running):
    _, stack, records, _ = running
    await until(lambda: records and records[-1].mode == "auto", 10, "auto mode")
    await stack.stop_device("bess-1")
    await until(lambda: records[-1].mode == "degraded", 5, "degraded mode")
    assert {"bess-1.soc", "bess-1.discharge_max_w"} <= set(records[-1].readings.missing)
    await stack.start_device("bess-1")
    await until(lambda: records[-1].mode == "auto", 15, "auto mode again")


async def test_lost_meter_is_reported_while_smoothing_goes_on(running):
    """Smoothing works from the loads; the meter only observes: its loss is reported, not fatal."""
    _, stack, records, _ = running
    await until(lambda: records and records[-1].mode == "auto", 10, "auto mode")
    await stack.stop_device("meter-1")
    await until(
        lambda: "meter-1.power_w" in records[-1].readings.missing,
        5,
        "meter reported missing",
    )
    assert records[-1].mode == "auto" and records[-1].readings.grid_w is None
    await stack.start_device("meter-1")


async def test_a_device_slow_to_answer_cannot_stall_the_loop(running):
    site, stack, records, loop = running
    await until(lambda: records and records[-1].mode == "auto", 10, "auto mode")
    bess = loop.drivers["bess-1"]  # the controller's own driver, read here for its counters
    stack.set_response_delay("bess-1", 0.8)  # beyond the driver's 0.5 s timeout
    await until(lambda: any(r.write_errors for r in records[-5:]), 5, "a write error")
    assert any("bess-1" in e for r in records[-5:] for e in r.write_errors)
    await asyncio.sleep(1.0)
    # The loop hands setpoints over and moves on: no tick waits for the slow device.
    assert all(r.duration_s < site.loop_period_s / 2 for r in records[-10:])
    assert bess.counters.write_errors_total > 0 and bess.counters.errors_total > 0
    stack.set_response_delay("bess-1", 0.0)
    await until(lambda: bess.connected and records[-1].mode == "auto", 15, "recovery")
    writes = bess.counters.writes_total
    await until(lambda: bess.counters.writes_total > writes + 3, 5, "writes to land again")


async def test_a_stalled_tick_counts_overruns_and_skips_instead_of_bunching(site_data: dict):
    site = modbus_only(site_data)
    stalls = iter([0.35])

    def slow_publish(rec: TickRecord) -> None:
        seen.append((rec.monotonic, rec.overruns_total))
        time.sleep(next(stalls, 0.0))  # block the event loop once, like a GC pause

    seen: list[tuple[float, int]] = []
    maps = device_maps(site)
    idle_drivers = {d.id: make_driver(d, maps[d.id]) for d in site.devices}  # never started
    loop = ControlLoop(site, idle_drivers, slow_publish)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await asyncio.sleep(1.0)
    stop.set()
    await task
    assert seen[-1][1] >= 2  # a 0.35 s stall at a 0.1 s period swallows the next two ticks
    gaps = [b[0] - a[0] for a, b in pairwise(seen)]
    # No burst of catch-up ticks (those would come back to back, microseconds apart): the
    # tick after the stall keeps the schedule's phase, here 0.05 s after the late one.
    assert min(gaps) > 0.03


async def test_ticks_wake_early_but_never_start_before_their_time(site_data: dict):
    """The loop wakes ahead of each tick (the event loop's timers run late) and yields until
    the tick's time: no tick starts early; while it runs, other threads give up the GIL
    within a twentieth of the period, and the interpreter's own interval comes back after."""
    site = modbus_only(site_data)
    site = site.model_copy(update={"loop_period_s": 0.02})
    seen: list[tuple[TickRecord, float]] = []
    maps = device_maps(site)
    idle_drivers = {d.id: make_driver(d, maps[d.id]) for d in site.devices}  # never started
    loop = ControlLoop(site, idle_drivers, lambda r: seen.append((r, sys.getswitchinterval())))
    stop = asyncio.Event()
    before = sys.getswitchinterval()
    task = asyncio.create_task(loop.run(stop))
    await asyncio.sleep(0.5)
    stop.set()
    await task
    assert sys.getswitchinterval() == before
    assert len(seen) >= 10
    assert max(switch for _, switch in seen) <= 0.02 / 20 + 1e-9 < before
    assert min(r.lateness_s for r, _ in seen) >= 0.0


def test_a_ups_is_never_asked_to_give_more_than_its_load():
    """A UPS battery feeds the UPS's own load; a share above it could not be delivered."""
    from controller.assets import BatteryAsset
    from controller.config import DispatchConfig
    from controller.site import _asset_state

    ups = BatteryAsset(
        "ups-a", "ups", True, soc=0.6, capacity_wh=1.5e6, power_w=0.0, discharge_max_w=7e6,
        charge_max_w=5e6, rated_w=7e6, load_w=2e6, enabled=None, mode=0.0,
    )  # fmt: skip
    asset = _asset_state(ups, DispatchConfig())
    assert asset is not None
    assert asset.discharge_max_w == 2e6 and asset.charge_max_w == 5e6
    assert asset.floor_j == pytest.approx(7e6 * 300 / 0.96)  # five minutes at rated load


async def test_safe_then_manual_then_auto_without_a_jump(running):
    """Safe: the batteries' power goes to zero no faster than the grid may ramp; manual: they
    hold the operator's power; back to auto, the grid carries on from where it is."""
    site, _, records, controller = running
    ops = controller.operations
    await until(lambda: records and records[-1].mode == "auto", 10, "auto mode")
    await asyncio.sleep(2.0)
    ops.change_mode("safe", SYSTEM, None)
    mark = len(records)
    await until(lambda: records[-1].mode == "safe" and records[-1].result.battery_w == 0.0, 30,
                "batteries at 0 W")  # fmt: skip
    safe = [r for r in records[mark:] if r.mode == "safe"]
    step = max(site.dispatch.ramp_up_w_per_s, site.dispatch.ramp_down_w_per_s) * 0.1
    for a, b in pairwise(safe):
        assert abs(b.result.battery_w) <= abs(a.result.battery_w) + 1.0
        assert abs(b.result.battery_w - a.result.battery_w) <= step * 1.001
    ops.change_setpoints({"manual_battery_w": 1.5e6}, SYSTEM, None)
    ops.change_mode("manual", SYSTEM, None)
    await until(lambda: records[-1].mode == "manual", 5, "manual mode")
    await asyncio.sleep(0.5)
    assert records[-1].result.battery_w == pytest.approx(1.5e6)
    ops.change_mode("auto", SYSTEM, None)
    mark = len(records)
    await until(lambda: len(records) > mark + 20 and records[mark].mode == "auto", 10, "auto")
    switch = next(i for i in range(mark - 1, len(records)) if records[i].mode == "auto")
    last_manual, first_auto = records[switch - 1], records[switch]
    # The batteries carry on from their manual power (in manual the grid took the load's
    # swings; auto does not add a step of its own) ...
    assert first_auto.result.battery_w == pytest.approx(
        last_manual.result.battery_w, abs=step * 1.001
    )
    # ... and from there the grid moves within the ramp limit (frequency response aside: it
    # acts outside the limiter by design).
    plan = [
        r.result.grid_target_w + r.result.frequency_response_w
        for r in records[switch : switch + 20]
    ]
    assert max(abs(b - a) for a, b in pairwise(plan)) <= step * 1.001


async def test_cooling_control_runs_the_cdu_and_falls_back_on_bad_telemetry(site: SiteConfig):
    """Over OPC UA: the loop trims the CDU's setpoint and drives its pumps; when the CDU shows
    NaN, the pumps go to the safe speed and the setpoint to the lowest allowed, and an alarm
    is raised; then back, and the alarm clears."""
    async with controller_running(site) as (stack, records, controller):

        def fallback_alarm() -> list:
            return [a for a in controller.alarms.active if a.key == "cooling_fallback:cdu-1"]

        cdu, safe = stack.cdu["cdu-1"], controller.loop.cooling_cfg
        await until(lambda: records and records[-1].cooling.get("cdu-1"), 20, "cooling commands")
        await until(lambda: cdu.pump_speed != 0.8, 10, "the pump command to land")
        assert not records[-1].cooling["cdu-1"].fallback
        stack.set_fault("cdu-1", Fault.NAN)
        await until(lambda: records[-1].cooling["cdu-1"].fallback, 10, "fallback")
        await until(lambda: cdu.pump_speed == safe.safe_pump_speed, 10, "safe pump speed")
        assert cdu.supply_setpoint_c == safe.min_supply_c
        await until(lambda: fallback_alarm(), 5, "the alarm")
        assert fallback_alarm()[0].severity == "critical"
        stack.set_fault("cdu-1", Fault.NONE)
        await until(lambda: not records[-1].cooling["cdu-1"].fallback, 10, "recovery")
        await until(lambda: not fallback_alarm(), 5, "the alarm to clear")


async def test_a_second_vendors_bess_is_a_map_file_and_nothing_else(site_data: dict):
    """bess-1 speaks another register layout (`bess_flat`: kW, 0.1 % SoC, little-endian, no
    SunSpec): the controller and the simulator know it only through its roles."""
    for module in site_data["modules"]:
        for device in module["devices"]:
            if device["id"] == "bess-1":
                device["map"] = "bess_flat"
    site = modbus_only(site_data)
    async with controller_running(site) as (stack, records, controller):
        await until(lambda: records and records[-1].mode == "auto", 10, "auto mode")
        await asyncio.sleep(1.0)
        last = records[-1]
        bess = stack.bess["bess-1"]
        assert last.readings.soc["bess-1"] == pytest.approx(bess.battery.soc, abs=0.002)
        assert bess.w_set_ena and bess.heartbeat.alive(bess.now_s)
        assert bess.w_set == pytest.approx(last.result.asset_w["bess-1"], rel=0.5, abs=5e5)
        shown = controller.drivers["bess-1"].values
        assert "state_of_charge" in shown and "soc_ratio" not in shown  # the vendor's names


async def test_a_meter_showing_nan_or_frozen_raises_an_alarm_and_recovers(running):
    """The meter only observes, so control goes on; but an operator hears of it. After a
    dropped link, its last error is no longer shown as current."""
    _, stack, records, controller = running
    await until(lambda: records and records[-1].mode == "auto", 10, "auto mode")

    def active(key: str) -> bool:
        return any(a.key == key for a in controller.alarms.active)

    for fault, key in (
        (Fault.NAN, "device_invalid:meter-1"),
        (Fault.FREEZE, "device_frozen:meter-1"),
    ):
        stack.set_fault("meter-1", fault)
        await until(lambda key=key: active(key), 10, f"the {key} alarm")
        assert records[-1].mode == "auto"
        stack.set_fault("meter-1", Fault.NONE)
        await until(lambda key=key: not active(key), 10, f"the {key} alarm to clear")
    stack.set_fault("meter-1", Fault.DROP)
    await until(lambda: records[-1].snapshot.devices["meter-1"].last_error, 10, "the drop")
    stack.set_fault("meter-1", Fault.NONE)
    await until(lambda: records[-1].snapshot.devices["meter-1"].last_error is None, 15, "recovery")
