"""Modbus TCP driver: block reads of holding registers, decoded through the device map.

At connect it reads the map's const and string points once: a device that shows other
constants (another SunSpec layout, a wrong address) is refused with the register named, and
the strings (maker, model, serial) become its identity."""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time

from pymodbus.client import AsyncModbusTcpClient, AsyncModbusTlsClient
from pymodbus.exceptions import ConnectionException

from drivers.base import (
    DeviceAnswerError,
    DeviceDriver,
    DeviceMismatchError,
    DeviceRejectedError,
    DeviceSecurityError,
    DriverSettings,
    WriteFenced,
)
from drivers.devicemap import Block, DeviceMap
from drivers.security import LinkSecurity, client_tls


class ModbusDriver(DeviceDriver):
    def __init__(
        self,
        device_id: str,
        devmap: DeviceMap,
        settings: DriverSettings,
        host: str,
        port: int,
        unit_id: int = 1,
        security: LinkSecurity | None = None,
    ) -> None:
        super().__init__(device_id, devmap, settings)
        self.host, self.port, self.unit_id = host, port, unit_id
        self.security = security
        self._client: AsyncModbusTcpClient | None = None
        self._factors: dict[str, float] = {}  # scale factors: consts, then as polled
        self._last_request_end = -math.inf

    async def _connect(self) -> None:
        # Our own loop does the retrying and backoff; pymodbus must not reconnect behind it.
        client: AsyncModbusTcpClient
        if self.security is not None:  # Modbus/TCP Security: mutual TLS, MBAP inside
            sslctx = client_tls(self.security)
            await self._check_peer(sslctx)
            client = AsyncModbusTlsClient(
                self.host,
                sslctx=sslctx,
                port=self.port,
                timeout=self.settings.timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        else:
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
        try:
            await self._check_identity()
        except BaseException:
            self._client = None
            client.close()
            raise

    async def _check_peer(self, sslctx: ssl.SSLContext) -> None:
        """One TLS handshake of our own first: pymodbus only says a connect failed, and a
        device whose certificate we do not trust must count as `security`, not `connection`."""
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=sslctx),
                self.settings.timeout_s,
            )
        except ssl.SSLCertVerificationError as exc:
            raise DeviceSecurityError(
                f"{self.host}:{self.port}: device certificate not trusted: {exc.verify_message}"
            ) from None
        except ssl.SSLError as exc:
            raise DeviceSecurityError(f"{self.host}:{self.port}: TLS refused: {exc}") from None
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async def _check_identity(self) -> None:
        identity: dict[str, str] = {}
        factors: dict[str, float] = {}
        for block in self.map.identity_blocks:
            for name, shown in (await self._read_block(block)).items():
                p = self.map.points[name]
                if p.const is not None and shown != p.const:
                    raise DeviceMismatchError(
                        f"register {p.address} ({name}) shows {shown!r}, "
                        f"{self.map.source} expects {p.const!r}"
                    )
                if isinstance(shown, str):
                    identity[name] = shown
                else:
                    factors[name] = shown
        self.identity, self._factors = identity, factors

    async def _read_block(self, block: Block) -> dict[str, float | str]:
        assert self._client is not None
        for attempt in range(self.settings.retries + 1):
            await self._keep_gap()
            rr = await self._client.read_holding_registers(
                block.address, count=block.count, device_id=self.unit_id
            )
            self._last_request_end = time.monotonic()
            if not rr.isError():
                return self.map.decode_block(block, rr.registers)
            if attempt < self.settings.retries:
                self.counters.retries_total += 1
        raise DeviceAnswerError(f"read of registers {block.address}+{block.count} answered {rr}")

    async def _keep_gap(self) -> None:
        wait = self._last_request_end + self.settings.min_gap_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _read_all(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for block in self.map.blocks:
            try:
                values.update(await self._read_block(block))  # type: ignore[arg-type]
            except ConnectionException as exc:  # pymodbus's: the link is down, say so plainly
                raise ConnectionError(str(exc)) from exc
        self.map.with_scale_factors(values, {**self._factors, **values})
        return values

    async def _write(self, point: str, value: float) -> None:
        assert self._client is not None
        p = self.map.point(point)
        sf = self.map.sf_value(p, self._factors)
        words = self.map.encode(p, value, sf)
        await self._keep_gap()
        if not self.may_write():  # asked again after the gap's wait: the request goes out now
            raise WriteFenced(f"{self.device_id}.{point}")
        rr = await self._client.write_registers(p.address, words, device_id=self.unit_id)  # type: ignore[arg-type]
        if rr.isError():
            raise DeviceRejectedError(f"write of register {p.address} answered {rr}")
        # Read it back: a device may take a write and keep another value (a clamp, a lock).
        back = await self._client.read_holding_registers(
            p.address,  # type: ignore[arg-type]
            count=len(words),
            device_id=self.unit_id,
        )
        if back.isError() or back.registers != words:
            shown = back if back.isError() else self.map.decode(p, back.registers) * 10.0**sf
            raise DeviceRejectedError(f"register {p.address} reads back {shown} after the write")

    def _link_up(self) -> bool:
        return self._client is not None and self._client.connected

    async def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
