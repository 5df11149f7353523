"""Drivers against the simulators, over real sockets on loopback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

import drivers
from controller.config import SiteConfig
from controller.service import make_driver
from controller.sitefile import plant_of
from controller.snapshot import take_snapshot
from drivers.base import DeviceDriver, DeviceIOError
from drivers.maploader import load_map
from drivers.sim.stack import SimulatorStack
from tests.plant import until


@pytest.fixture
async def ups_driver(modbus_plant):
    site, _ = modbus_plant
    driver = make_driver(next(d for d in site.devices if d.id == "ups-a"))
    driver.start()
    await until(lambda: len(driver.values) == len(driver.map.points), what="first poll")
    yield driver
    await driver.stop()


async def test_modbus_driver_reads_every_point_of_the_map(modbus_plant, ups_driver: DeviceDriver):
    _, stack = modbus_plant
    v = ups_driver.values
    assert set(v) == set(ups_driver.map.points)
    assert v["rated_power_w"].value == stack.ups["ups-a"].rated_power_w
    assert v["battery_capacity_wh"].unit == "Wh"
    assert 0.0 <= v["battery_soc_ratio"].value <= 1.0
    assert all(p.valid for p in v.values())
    # IT load: half the site's, within what float32 and one physics step can move it.
    assert v["output_power_w"].value > 1e6
    assert ups_driver.counters.errors_total == 0
    assert ups_driver.counters.last_latency_s < ups_driver.settings.timeout_s


async def test_write_reaches_the_device(modbus_plant, ups_driver: DeviceDriver):
    _, stack = modbus_plant
    await ups_driver.write("input_power_limit_w", 1_234_000.0)
    assert stack.ups["ups-a"].input_limit_w == pytest.approx(1_234_000.0)
    await until(
        lambda: ups_driver.values["input_power_limit_w"].value == pytest.approx(1_234_000.0),
        what="read-back of the limit",
    )
    assert ups_driver.counters.writes_total == 1


async def test_queued_setpoints_coalesce_to_the_latest(modbus_plant, ups_driver: DeviceDriver):
    _, stack = modbus_plant
    first = ups_driver.submit("input_power_limit_w", 1e6)
    second = ups_driver.submit("input_power_limit_w", 2e6)  # before the driver task ran
    await asyncio.gather(first, second)
    assert ups_driver.counters.writes_total == 1
    assert stack.ups["ups-a"].input_limit_w == 2e6


async def test_driver_refuses_bad_writes_before_sending(ups_driver: DeviceDriver):
    with pytest.raises(DeviceIOError, match=r"ups-a\.mode = 1 1: point is read-only"):
        await ups_driver.write("mode", 1)
    with pytest.raises(DeviceIOError, match=r"ups-a\.input_power_limit_w = -5.0 W: outside"):
        await ups_driver.write("input_power_limit_w", -5.0)
    with pytest.raises(DeviceIOError, match="outside"):
        await ups_driver.write("input_power_limit_w", float("nan"))
    assert ups_driver.counters.writes_total == 0


async def test_simulator_answers_modbus_exceptions_like_a_device(modbus_plant):
    site, stack = modbus_plant
    bess = next(d for d in site.devices if d.id == "bess-1")
    points = load_map("bess").points
    w, ena, w_set = (points[n].address for n in ("w", "w_set_ena", "w_set"))
    client = AsyncModbusTcpClient("127.0.0.1", port=bess.port, timeout=2, retries=0)
    assert await client.connect()
    try:
        read_only = await client.write_registers(w, [0], device_id=1)  # `w` is measured
        assert read_only.isError() and read_only.exception_code == 2
        bad_value = await client.write_registers(ena, [5], device_id=1)  # w_set_ena ∈ {0, 1}
        assert bad_value.isError() and bad_value.exception_code == 3
        half_point = await client.write_registers(w_set + 1, [0], device_id=1)  # w_set's 2nd word
        assert half_point.isError() and half_point.exception_code == 2
        assert not stack.bess["bess-1"].w_set_ena
        ok = await client.write_registers(ena, [1], device_id=1)
        assert not ok.isError() and stack.bess["bess-1"].w_set_ena
    finally:
        client.close()


async def test_sunspec_bess_through_the_driver(modbus_plant):
    site, stack = modbus_plant
    driver = make_driver(next(d for d in site.devices if d.id == "bess-1"))
    driver.start()
    try:
        await until(lambda: len(driver.values) == len(driver.map.polled), what="first poll")
        assert driver.identity == {
            "sunspec_marker": "SunS",
            "manufacturer": "gridpilot",
            "device_model": "simulated-bess",
            "serial_number": "SIM-BESS-0001",
        }
        model = stack.bess["bess-1"]
        v = driver.values
        assert v["w_max_rtg"].value == model.w_max_rtg  # 4 MW as 4000 × 10^3
        assert v["wh_rtg"].value == model.battery.capacity_wh
        assert v["soc_ratio"].value == pytest.approx(model.battery.soc, abs=1e-4)  # 0.01 %
        assert v["hz"].value == pytest.approx(50.0, abs=0.5)
        await driver.write("w_set", 1_500_000.0)
        await driver.write("w_set_ena", 1)
        assert model.w_set == 1_500_000.0 and model.w_set_ena
        for beat in range(3):  # the battery follows while the heartbeat lives
            await driver.write("heartbeat", beat)
            await asyncio.sleep(0.05)
        await until(lambda: driver.values["w"].value == 1_500_000.0, what="the battery to follow")
    finally:
        await driver.stop()


async def test_minimum_gap_between_requests(modbus_plant):
    """A slow gateway's minimum gap: the BESS's four block reads are spread apart."""
    site, _ = modbus_plant
    config = next(d for d in site.devices if d.id == "bess-1")
    driver = make_driver(config.model_copy(update={"min_gap_s": 0.05}))
    assert len(driver.map.blocks) == 4
    await driver.open()
    try:
        await driver.read_once()
        assert driver.counters.last_latency_s >= 3 * 0.05
    finally:
        await driver.stop()


async def test_a_device_that_is_not_what_its_map_says_is_refused(modbus_plant, tmp_path: Path):
    """A map expecting another maker, and a SunSpec map pointed at a UPS: each is refused,
    with the register named, and nothing is read from it."""
    site, _ = modbus_plant
    devices = {d.id: d for d in site.devices}
    acme = tmp_path / "acme-bess.yaml"
    acme.write_text(
        (Path(drivers.__file__).parent / "maps" / "bess.yaml")
        .read_text()
        .replace("const: gridpilot", "const: acme")
    )
    cases = [
        (devices["bess-1"].model_copy(update={"map": str(acme)}), "register 40004 (manufacturer)"),
        (devices["ups-a"].model_copy(update={"kind": "bess"}), "registers 40000+"),
    ]
    for config, where in cases:
        driver = make_driver(config)
        driver.start()
        try:
            await until(lambda d=driver: d.counters.last_error is not None, what="the refusal")
            assert where in driver.counters.last_error
            assert not driver.connected and not driver.values
        finally:
            await driver.stop()


async def test_lost_device_goes_stale_then_recovers(modbus_plant, ups_driver: DeviceDriver):
    site, stack = modbus_plant
    configs = {d.id: d for d in site.devices}
    drivers = {"ups-a": ups_driver}
    fresh = take_snapshot(drivers, configs, time.monotonic(), time.time())
    assert fresh.devices["ups-a"].role("load_w") is not None

    await stack.stop_device("ups-a")
    await until(lambda: not ups_driver.connected, what="the driver to notice")
    await asyncio.sleep(configs["ups-a"].stale_after_s)
    lost = take_snapshot(drivers, configs, time.monotonic(), time.time())
    dev = lost.devices["ups-a"]
    assert not dev.connected and dev.last_error
    assert dev.points["output_power_w"].stale
    assert dev.role("load_w") is None  # never used for control
    assert ups_driver.counters.errors_total >= 1
    with pytest.raises(DeviceIOError, match="not connected"):
        await ups_driver.write("input_power_limit_w", 1e6)

    await stack.start_device("ups-a")
    await until(lambda: ups_driver.connected, timeout_s=10, what="reconnection")
    polls = ups_driver.counters.polls_total
    await until(lambda: ups_driver.counters.polls_total > polls, what="a fresh poll")
    back = take_snapshot(drivers, configs, time.monotonic(), time.time())
    assert back.devices["ups-a"].role("load_w") is not None


async def test_opcua_driver_reads_and_writes_the_cdu(site: SiteConfig):
    stack = SimulatorStack(plant_of(site))
    await stack.start()
    driver = make_driver(next(d for d in site.devices if d.kind == "cdu"))
    driver.start()
    try:
        await until(lambda: len(driver.values) == len(driver.map.points), 15, "first OPC UA poll")
        v = driver.values
        assert v["supply_temperature_c"].unit == "°C"
        assert v["return_temperature_c"].value > v["supply_temperature_c"].value
        assert v["heat_load_w"].value > 1e6
        await driver.write("supply_temperature_setpoint_c", 35.0)
        await until(lambda: stack.cdu["cdu-1"].supply_setpoint_c == 35.0, 5, "setpoint to land")
        with pytest.raises(DeviceIOError, match="outside"):
            await driver.write("supply_temperature_setpoint_c", 95.0)
    finally:
        await driver.stop()
        await stack.stop()
