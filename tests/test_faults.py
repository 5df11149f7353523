"""Faults on command: each simulated fault is detected by the driver, flagged in the snapshot
(stale or invalid, never used for control), reported, leaves the rest of the site running,
and ends with the driver recovering on its own."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.collectors import DriverCollector
from controller.config import SiteConfig
from controller.service import make_driver
from controller.sitefile import device_maps, plant_of
from controller.snapshot import Snapshot, take_snapshot
from drivers.sim.faults import Fault
from drivers.sim.stack import SimulatorStack
from tests.plant import until

ROLE = "load_w"  # the UPS output: the IT load it carries
# fault → (what the snapshot shows, the error kind the driver counts; None: none counted)
EXPECTED = {
    Fault.DROP: ("stale", "connection"),
    Fault.SILENT: ("stale", "timeout"),
    Fault.EXCEPTION: ("stale", "exception"),
    Fault.NAN: ("invalid", None),
    Fault.ABSURD: ("invalid", None),
    Fault.FREEZE: ("stale", "frozen"),
}


@pytest.fixture
async def ups_pair(modbus_plant):
    site, stack = modbus_plant
    configs = {d.id: d for d in site.devices if d.kind == "ups"}
    maps = device_maps(site)
    drivers = {i: make_driver(c, maps[i]) for i, c in configs.items()}
    for d in drivers.values():
        d.start()
    await until(lambda: all(d.values for d in drivers.values()), what="first polls")

    def snapshot() -> Snapshot:
        return take_snapshot(drivers, configs, time.monotonic(), time.time())

    yield site, stack, drivers, snapshot
    for d in drivers.values():
        await d.stop()


@pytest.mark.parametrize("fault", list(EXPECTED))
async def test_fault_is_detected_reported_contained_and_recovered(ups_pair, fault: Fault):
    site, stack, drivers, snapshot = ups_pair
    shows, kind = EXPECTED[fault]
    assert snapshot().devices["ups-a"].role(ROLE) is not None

    stack.set_fault("ups-a", fault)
    await until(lambda: snapshot().devices["ups-a"].role(ROLE) is None, 10, f"{fault} noticed")
    reading = snapshot().devices["ups-a"].role_reading(ROLE)
    if shows == "invalid":  # the device answers on time, with values that cannot be used
        assert not reading.valid and not reading.stale and drivers["ups-a"].connected
    else:
        counters = drivers["ups-a"].counters
        await until(lambda: counters.errors_total > 0, 5, "the error to be counted")
        assert snapshot().devices["ups-a"].role_reading(ROLE).stale
        assert counters.errors_by_kind.get(kind, 0) >= 1, counters
        if fault is Fault.EXCEPTION:  # an error answer is tried again before it counts
            assert counters.retries_total >= counters.errors_by_kind["exception"]
    if kind is not None:  # and the metrics say so, by kind
        registry = CollectorRegistry()  # the collector /metrics serves, on this snapshot
        registry.register(DriverCollector(site.name, snapshot))
        scrape = generate_latest(registry).decode()
        samples = {
            (s.name, s.labels.get("device"), s.labels.get("kind")): s.value
            for family in text_string_to_metric_families(scrape)
            for s in family.samples
        }
        assert samples[("gridpilot_device_errors_by_kind_total", "ups-a", kind)] >= 1
        assert samples[("gridpilot_device_errors_by_kind_total", "ups-b", kind)] == 0
        assert samples[("gridpilot_device_frozen", "ups-a", None)] == (fault is Fault.FREEZE)
    # The rest of the site goes on: the other UPS stays fresh all along.
    assert snapshot().devices["ups-b"].role(ROLE) is not None

    stack.set_fault("ups-a", Fault.NONE)
    await until(lambda: snapshot().devices["ups-a"].role(ROLE) is not None, 15, "recovery")
    assert drivers["ups-a"].connected and not drivers["ups-a"].frozen


@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_opcua_cdu_value_faults(site: SiteConfig, mode: str):
    """Over OPC UA too, read or subscribed: NaN is flagged invalid, a frozen CDU goes stale
    once its heartbeat stands still, and both recover; a Modbus link fault is refused for it."""
    stack = SimulatorStack(plant_of(site))
    await stack.start()
    cdu = next(d for d in site.devices if d.kind == "cdu")
    config = cdu.model_copy(update={"opcua_mode": mode})
    driver = make_driver(config, device_maps(site)[config.id])
    driver.start()

    def reading():
        snap = take_snapshot({config.id: driver}, {config.id: config}, time.monotonic(), 0.0)
        return snap.devices[config.id].role_reading("supply_c")

    try:
        await until(lambda: driver.values, 15, "first OPC UA poll")
        with pytest.raises(ValueError, match="cdu-1: silent is a Modbus link fault"):
            stack.set_fault(config.id, Fault.SILENT)
        stack.set_fault(config.id, Fault.NAN)
        await until(lambda: not reading().valid, 5, "NaN flagged")
        assert not reading().stale
        stack.set_fault(config.id, Fault.FREEZE)
        await until(lambda: reading().stale, 10, "frozen CDU flagged stale")
        assert driver.frozen and driver.counters.errors_by_kind["frozen"] == 1
        stack.set_fault(config.id, Fault.NONE)
        await until(lambda: reading().usable, 10, "recovery")
        # The server goes away and comes back: the session (and subscription) is rebuilt.
        await stack.stop_device(config.id)
        await until(lambda: not driver.connected, 10, "the loss noticed")
        await stack.start_device(config.id)
        # A new session has no value until its first read (or notification) comes.
        await until(lambda: (r := reading()) is not None and r.usable, 20, "a new session")
    finally:
        await driver.stop()
        await stack.stop()
