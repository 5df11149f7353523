"""Modbus TCP driver: block reads of holding registers, decoded through the device map."""

from __future__ import annotations

from pymodbus.client import AsyncModbusTcpClient

from drivers.base import DeviceDriver, DeviceRejectedError, DriverSettings
from drivers.devicemap import DeviceMap


class ModbusDriver(DeviceDriver):
    def __init__(
        self,
        device_id: str,
        devmap: DeviceMap,
        settings: DriverSettings,
        host: str,
        port: int,
        unit_id: int = 1,
    ) -> None:
        super().__init__(device_id, devmap, settings)
        self.host, self.port, self.unit_id = host, port, unit_id
        self._client: AsyncModbusTcpClient | None = None

    async def _connect(self) -> None:
        # Our own loop does the retrying and backoff; pymodbus must not reconnect behind it.
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.settings.timeout_s,
            retries=0,
            reconnect_delay=0,
        )
        if not await client.connect():
            client.close()
            raise ConnectionError(f"cannot connect to {self.host}:{self.port}")
        self._client = client

    async def _read_all(self) -> dict[str, float]:
        assert self._client is not None
        values: dict[str, float] = {}
        for block in self.map.blocks:
            rr = await self._client.read_holding_registers(
                block.address, count=block.count, device_id=self.unit_id
            )
            if rr.isError():
                raise OSError(f"read of registers {block.address}+{block.count} answered {rr}")
            values.update(self.map.decode_block(block, rr.registers))
        return values

    async def _write(self, point: str, value: float) -> None:
        assert self._client is not None
        p = self.map.point(point)
        words = self.map.encode(p, value)
        rr = await self._client.write_registers(p.address, words, device_id=self.unit_id)  # type: ignore[arg-type]
        if rr.isError():
            raise DeviceRejectedError(f"write of register {p.address} answered {rr}")

    async def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
