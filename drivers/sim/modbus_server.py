"""Serve a device map's registers over Modbus TCP (pymodbus server), backed by a register image."""

from __future__ import annotations

import asyncio
import contextvars
import ssl
from collections.abc import Callable

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer, ModbusTlsServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.devicemap import DeviceMap, Point
from drivers.sim.faults import LINK_FAULTS, Fault, faulty_words, measured


class RegisterImage:
    """The registers a device shows, encoded through its map, const points included."""

    def __init__(self, devmap: DeviceMap) -> None:
        self.map = devmap
        points = list(devmap.points.values())
        self.start = min(p.address for p in points)  # type: ignore[type-var]
        end = max(p.address + p.register_count for p in points)  # type: ignore[operator]
        self.registers = [0] * (end - self.start)
        for address, words in devmap.const_words().items():
            self.registers[address - self.start : address - self.start + len(words)] = words
        self._by_register: dict[int, Point] = {
            p.address: p
            for p in points  # type: ignore[misc]
        }
        self.fault = Fault.NONE

    def show_fault(self, fault: Fault) -> None:
        """NaN and absurd spoil every measured point (the heartbeat goes on); freeze stops
        every update; anything else lets the physics write again."""
        self.fault = fault
        if fault in (Fault.NAN, Fault.ABSURD):
            for p in measured(self.map):
                self._put(p, faulty_words(self.map, p, fault))

    def _put(self, p: Point, words: list[int]) -> None:
        offset = p.address - self.start  # type: ignore[operator]
        self.registers[offset : offset + len(words)] = words

    def set(self, name: str, value: float) -> None:
        if self.fault is Fault.FREEZE:
            return
        if self.fault in (Fault.NAN, Fault.ABSURD) and name != self.map.alive_point:
            return
        p = self.map.point(name)
        self._put(p, self.map.encode(p, value, self.map.sf_value(p, {})))

    def set_many(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.set(name, value)

    def _decode(self, p: Point, words: list[int]) -> float:
        return self.map.decode(p, words) * 10.0 ** self.map.sf_value(p, {})

    def get(self, name: str) -> float:
        p = self.map.point(name)
        return self._decode(p, self.registers[p.address - self.start :])  # type: ignore[operator]

    def decode_write(self, address: int, words: list[int]) -> dict[str, float] | ExcCodes:
        """What a write request means point by point, or the exception a device would answer."""
        changes: dict[str, float] = {}
        reg = address
        while reg < address + len(words):
            p = self._by_register.get(reg)
            if p is None or not p.writable or reg + p.register_count > address + len(words):
                return ExcCodes.ILLEGAL_ADDRESS
            value = self._decode(p, words[reg - address :])
            if not p.in_range(value):
                return ExcCodes.ILLEGAL_VALUE
            changes[p.name] = value
            reg += p.register_count
        return changes


# Who sent the request being served: "host:port" of the client's end of the connection. Each
# request is handled in a task of its own, so the device's write hook can read it.
_PEER: contextvars.ContextVar[str] = contextvars.ContextVar("modbus_peer", default="?")


class _PeerHandler(ServerRequestHandler):
    async def handle_request(self) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        _PEER.set(f"{peer[0]}:{peer[1]}" if peer else "?")
        await super().handle_request()


class _TcpServer(ModbusTcpServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _PeerHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class _TlsServer(ModbusTlsServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _PeerHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class ModbusDeviceServer:
    """One simulated device on its own TCP port. Writes reach `on_write(point, value, peer)`,
    with the writer's "host:port" (HA tests check which controller wrote what, and when)."""

    def __init__(
        self,
        image: RegisterImage,
        host: str,
        port: int,
        unit_id: int,
        on_write: Callable[[str, float, str], None],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.image, self.on_write = image, on_write
        self.host, self.port = host, port
        self.response_delay_s = 0.0  # a fault knob: a device slow to answer
        self.fault = Fault.NONE  # the link faults; the image shows the value faults
        device = SimDevice(
            id=unit_id,
            simdata=[
                SimData(
                    address=image.start,
                    count=len(image.registers),
                    values=0,
                    datatype=DataType.REGISTERS,
                )
            ],
            action=self._action,
        )
        self.server = (
            _TlsServer(device, address=(host, port), sslctx=tls)
            if tls is not None
            else _TcpServer(device, address=(host, port))
        )

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.response_delay_s > 0:
            await asyncio.sleep(self.response_delay_s)
        while self.fault is Fault.SILENT:
            await asyncio.sleep(0.05)
        if self.fault is Fault.DROP:
            for connection in list(self.server.active_connections.values()):
                if connection.transport:
                    connection.transport.abort()  # a reset, with no answer sent
            return None
        if self.fault is Fault.EXCEPTION:
            return ExcCodes.DEVICE_FAILURE
        if set_values is None:
            registers[: len(self.image.registers)] = self.image.registers
            return None
        changes = self.image.decode_write(address, [int(v) for v in set_values])
        if isinstance(changes, ExcCodes):
            return changes
        for name, value in changes.items():
            self.image.set(name, value)
            self.on_write(name, value, _PEER.get())
        return None

    def set_fault(self, fault: Fault) -> None:
        self.fault = fault if fault in LINK_FAULTS else Fault.NONE
        self.image.show_fault(Fault.NONE if fault in LINK_FAULTS else fault)

    async def start(self) -> None:
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        await self.server.shutdown()
