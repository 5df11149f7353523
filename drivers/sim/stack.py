"""The simulated plant of a site: one protocol server per configured device, one physics task.

Every device of the plant gets a server at its address, speaking its protocol and its map. The
physics task joins them: the AI load feeds the UPS modules, the CDU takes the heat, the meter
sees what the UPS inputs, the cooling and the BESS add up to. The physics speaks roles
(`drivers/kinds.py`); each device's map says which of its points plays each role, so any map
of a kind is served alike.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from drivers.devicemap import DeviceMap
from drivers.maploader import load_map
from drivers.security import server_tls
from drivers.sim.faults import LINK_FAULTS, Fault, faulty_value, measured
from drivers.sim.load import TraceLoad
from drivers.sim.modbus_server import ModbusDeviceServer, RegisterImage
from drivers.sim.opcua_server import DeviceSecurity, OpcUaDeviceServer
from drivers.sim.plant import (
    Battery,
    BessModel,
    CduModel,
    FrequencyExcursion,
    Heartbeat,
    MeterModel,
    UpsModel,
)
from drivers.sim.settings import Plant, SimDevice
from drivers.sim.tokens import MetricsEndpoint, TraceTokens

log = logging.getLogger("gridpilot.sim")
OPCUA_PUBLISH_PERIOD_S = 0.1
KEEP_WRITES = 100_000  # the newest accepted writes, for tests that check who wrote when
KEEP_GRID_S = 600.0  # of the meter's grid draw, each physics step


@dataclass(frozen=True)
class Write:
    """A write a device took: when (time.monotonic()), what, and who sent it ("host:port" of
    the writer's connection; "opcua" for OPC UA devices, whose writes are taken in batches)."""

    at: float
    device: str
    point: str
    value: float
    peer: str


class SimulatorStack:
    def __init__(self, plant: Plant) -> None:
        sim = plant.simulation
        self.plant = plant
        self.load = TraceLoad(sim.trace, sim.gpus, sim.base_w, sim.racks, sim.rack_jitter_s)
        self.tokens = TraceTokens(sim.inference_trace, sim.token_gpus)
        self._token_endpoint = (
            MetricsEndpoint(
                sim.inference_host,
                sim.inference_port,
                lambda: self.tokens.total(self.sim_time_s),
                sim.inference_trace,
            )
            if sim.inference_port is not None
            else None
        )
        self.ups: dict[str, UpsModel] = {
            d.id: UpsModel(
                rated_power_w=sim.ups_rated_power_w,
                max_charge_w=sim.ups_max_charge_w,
                battery=Battery(sim.ups_battery_wh, sim.initial_soc_ratio),
                heartbeat=Heartbeat(sim.heartbeat_timeout_s, clock=time.monotonic),
            )
            for d in plant.of_kind("ups")
        }
        self.bess: dict[str, BessModel] = {
            d.id: BessModel(
                w_max_rtg=sim.bess_w_max_rtg,
                battery=Battery(sim.bess_wh_rtg, sim.initial_soc_ratio),
                heartbeat=Heartbeat(sim.heartbeat_timeout_s, clock=time.monotonic),
            )
            for d in plant.of_kind("bess")
        }
        self.cdu: dict[str, CduModel] = {d.id: CduModel() for d in plant.of_kind("cdu")}
        excursions = [FrequencyExcursion(**e.model_dump()) for e in sim.frequency_events]
        self.meter: dict[str, MeterModel] = {
            d.id: MeterModel(float(sim.grid_frequency_hz), events=list(excursions))
            for d in plant.of_kind("meter")
        }
        self.models = {**self.ups, **self.bess, **self.cdu, **self.meter}
        self.maps: dict[str, DeviceMap] = {d.id: load_map(d.map) for d in plant.devices}
        self.faults: dict[str, Fault] = {}
        self.images: dict[str, RegisterImage] = {}
        self._modbus: dict[str, ModbusDeviceServer] = {}
        self._opcua: dict[str, OpcUaDeviceServer] = {}
        self._task: asyncio.Task[None] | None = None
        self.sim_time_s = 0.0
        self.it_w = 0.0
        self.writes: deque[Write] = deque(maxlen=KEEP_WRITES)
        steps = int(KEEP_GRID_S / plant.simulation.physics_period_s)
        self.grid_w: deque[tuple[float, float]] = deque(maxlen=steps)  # (monotonic, W)

    def shown(self, device_id: str) -> dict[str, float]:
        """What a device shows now, by point name: each role its map has, from the physics,
        and its own heartbeat counting seconds."""
        devmap = self.maps[device_id]
        values = {
            devmap.roles[role]: value
            for role, value in self.models[device_id].points().items()
            if role in devmap.roles
        }
        if devmap.alive_point is not None:
            values[devmap.alive_point] = float(int(self.sim_time_s) % 65536)
        return values

    def _written(self, device_id: str, point: str, value: float, peer: str) -> None:
        """A write the device took, handed to its physics by the role the point plays."""
        self.writes.append(Write(time.monotonic(), device_id, point, value, peer))
        role = self.maps[device_id].points[point].role
        if role is not None:
            self.models[device_id].write(role, value)

    async def _start_device(self, device: SimDevice) -> None:
        devmap = self.maps[device.id]
        sec = self.plant.simulation.security
        if devmap.protocol == "modbus":
            image = self.images.setdefault(device.id, RegisterImage(devmap))
            image.set_many(self.shown(device.id))
            tls = server_tls(sec.certificate, sec.private_key, sec.client_ca) if sec else None
            server = ModbusDeviceServer(
                image,
                device.host,
                device.port,
                device.unit_id,
                lambda point, value, peer: self._written(device.id, point, value, peer),
                tls,
            )
            server.set_fault(self.faults.get(device.id, Fault.NONE))
            await server.start()
            self._modbus[device.id] = server
        else:
            ua_server = OpcUaDeviceServer(
                devmap,
                device.host,
                device.port,
                device.id,
                DeviceSecurity(sec.certificate, sec.private_key, (sec.client_ca,)) if sec else None,
                {u: p.get_secret_value() for u, p in sec.users.items()} if sec else None,
            )
            await ua_server.start(self.shown(device.id))
            self._opcua[device.id] = ua_server

    async def start(self) -> None:
        self._step(self.plant.simulation.physics_period_s)
        for device in self.plant.devices:
            await self._start_device(device)
        if self._token_endpoint is not None:
            await self._token_endpoint.start()
        self._task = asyncio.create_task(self._run(), name="sim:physics")
        log.info("simulators up", extra={"devices": len(self.plant.devices)})

    async def stop_device(self, device_id: str) -> None:
        """Take one device off the network (its physics goes on): a fault for tests."""
        if device_id in self._modbus:
            await self._modbus.pop(device_id).stop()
        elif device_id in self._opcua:
            await self._opcua.pop(device_id).stop()

    async def start_device(self, device_id: str) -> None:
        """Bring a stopped device back on its address."""
        device = next(d for d in self.plant.devices if d.id == device_id)
        await self._start_device(device)

    def set_response_delay(self, device_id: str, seconds: float) -> None:
        """Make a Modbus device slow to answer every request: a fault for tests."""
        self._modbus[device_id].response_delay_s = seconds

    def frequency_event(
        self, depth_hz: float, fall_s: float, hold_s: float, recover_s: float
    ) -> None:
        """Start a grid-frequency excursion now, on every meter (tests, demos)."""
        for meter in self.meter.values():
            meter.events.append(
                FrequencyExcursion(meter.now_s, depth_hz, fall_s, hold_s, recover_s)
            )

    def set_fault(self, device_id: str, fault: Fault) -> None:
        """Make a device show a fault (Fault.NONE ends it); its physics goes on meanwhile."""
        if device_id not in self.models:
            raise KeyError(f"no simulated device {device_id!r}")
        if fault in LINK_FAULTS and self.maps[device_id].protocol != "modbus":
            raise ValueError(f"{device_id}: {fault} is a Modbus link fault")
        self.faults[device_id] = fault
        if device_id in self._modbus:
            self._modbus[device_id].set_fault(fault)
        log.warning("fault", extra={"device": device_id, "fault": str(fault)})

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for device_id in list(self._modbus) + list(self._opcua):
            await self.stop_device(device_id)
        if self._token_endpoint is not None:
            await self._token_endpoint.stop()

    def _step(self, dt: float) -> None:
        self.sim_time_s += dt
        self.it_w = self.load.it_power_w(self.sim_time_s)
        share = self.it_w / max(len(self.ups), 1)
        for ups in self.ups.values():
            ups.step(share, dt)
        frequency = next(iter(self.meter.values())).frequency_hz if self.meter else None
        for bess in self.bess.values():
            bess.hz = frequency or bess.hz
            bess.step(dt)
        for cdu in self.cdu.values():
            cdu.step(self.it_w, dt)
        grid_w = (
            sum(u.input_w for u in self.ups.values())
            + sum(c.cooling_power_w for c in self.cdu.values())
            - sum(b.w for b in self.bess.values())
        )
        for meter in self.meter.values():
            meter.step(grid_w, dt)
        self.grid_w.append((time.monotonic(), grid_w))

    async def _run(self) -> None:
        period = self.plant.simulation.physics_period_s
        last = time.monotonic()
        next_publish = last
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            # Big gaps (a stalled process) are integrated in steps no longer than 10 periods.
            self._step(min(now - last, 10 * period))
            last = now
            for device_id, image in self.images.items():
                image.set_many(self.shown(device_id))
            if now >= next_publish:
                next_publish = now + OPCUA_PUBLISH_PERIOD_S
                await self._exchange_opcua()

    async def _exchange_opcua(self) -> None:
        for device_id, server in list(self._opcua.items()):
            fault = self.faults.get(device_id, Fault.NONE)
            if fault is Fault.FREEZE:
                continue
            values = self.shown(device_id)
            if fault in (Fault.NAN, Fault.ABSURD):
                values |= {p.name: faulty_value(fault) for p in measured(self.maps[device_id])}
            try:
                for name, value in (await server.take_writes()).items():
                    self._written(device_id, name, value, "opcua")
                await server.publish(values)
            except Exception:  # a server being stopped mid-exchange; the physics goes on
                log.exception("OPC UA exchange failed", extra={"device": device_id})


class SimulatorThread:
    """Runs a SimulatorStack on its own event loop in a background thread, so the plant's
    physics keeps its own time whatever the controller's loop is doing."""

    def __init__(self, plant: Plant) -> None:
        self.stack = SimulatorStack(plant)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sim", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.stack.start(), self._loop).result(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.stack.stop(), self._loop).result(timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        self._loop.close()
