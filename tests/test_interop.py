"""Our simulators read and written by clients we did not write: pysunspec2 (the SunSpec
Alliance's own client) scans the BESS, mbpoll (libmodbus, the Debian package) talks to the UPS.
If our register layout drifted from the standard, these would see it first."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from drivers.certs import make_site_certs
from drivers.maploader import load_map
from drivers.security import server_tls
from drivers.sim.modbus_server import ModbusDeviceServer, RegisterImage
from tests.sites import free_port

MBPOLL = shutil.which("mbpoll")


async def serve(kind: str, values: dict[str, float], tls: ssl.SSLContext | None = None):
    image = RegisterImage(load_map(kind))
    image.set_many(values)
    writes: list[tuple[str, float, str]] = []  # point, value, the writer's host:port
    port = free_port()
    server = ModbusDeviceServer(image, "127.0.0.1", port, 1, lambda *w: writes.append(w), tls)
    await server.start()
    return server, writes


def scan(port: int, **tls: object) -> dict[str, object]:
    device = SunSpecModbusClientDeviceTCP(
        slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=5, **tls
    )
    try:
        device.scan()
        common = device.models["common"][0]
        storage = device.models["DERStorageCapacity"][0]
        measure = device.models["DERMeasureAC"][0]
        return {
            "models": sorted(m for m in device.models if isinstance(m, int)),
            "maker": common.Mn.cvalue,
            "serial": common.SN.cvalue,
            "soc_percent": storage.SoC.cvalue,
            "wh_rtg": storage.WHRtg.cvalue,
            "w": measure.W.cvalue,
        }
    finally:
        device.disconnect()


@pytest.mark.parametrize("secured", [False, True], ids=["tcp", "tls"])
async def test_pysunspec2_scans_the_bess_and_reads_soc_and_power(secured: bool, tmp_path: Path):
    """Plain, and over Modbus/TCP Security: pysunspec2's own TLS client against our server."""
    tls, client = None, {}
    if secured:
        certs = make_site_certs(tmp_path, ["127.0.0.1"])
        tls = server_tls(certs.device.certificate, certs.device.private_key, certs.ca)
        client = {
            "tls": True,
            "cafile": str(certs.ca),
            "certfile": str(certs.controller.certificate),
            "keyfile": str(certs.controller.private_key),
        }
    values = {"soc_ratio": 0.6789, "w": -1_234_000.0, "wh_rtg": 8e6, "w_max_rtg": 4e6}
    server, _ = await serve("bess", values, tls)
    try:
        found = await asyncio.to_thread(scan, server.port, **client)
    finally:
        await server.stop()
    assert found == {
        "models": [1, 701, 702, 704, 713, 802],
        "maker": "gridpilot",
        "serial": "SIM-BESS-0001",
        "soc_percent": pytest.approx(67.89),
        "wh_rtg": 8e6,
        "w": -1_234_000,
    }


async def mbpoll(port: int, *args: str) -> tuple[int, str]:
    assert MBPOLL, "mbpoll is missing: `make test` installs it (apt-get install mbpoll)"
    proc = await asyncio.create_subprocess_exec(
        MBPOLL, "-m", "tcp", "-p", str(port), "-a", "1", "-0", "-1", "-o", "2", *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode, out.decode()


def registers(output: str) -> dict[int, float]:
    """mbpoll's `[ref]: value` lines."""
    values = {}
    for line in output.splitlines():
        if line.startswith("[") and "]:" in line:
            ref, value = line.split("]:")
            values[int(ref[1:])] = float(value)
    return values


async def test_mbpoll_reads_and_writes_the_ups():
    ups = load_map("ups")
    address = {name: str(p.address) for name, p in ups.points.items()}
    server, writes = await serve(
        "ups", {"output_power_w": 3.25e6, "input_power_w": 2.5e6, "battery_soc_ratio": 0.6123}
    )
    try:
        port = server.port
        code, out = await mbpoll(port, "-t", "4:float", "-B", "-r", "0", "-c", "2", "127.0.0.1")
        assert code == 0, out
        assert registers(out) == {0: 3.25e6, 2: 2.5e6}  # output and input power, W
        code, out = await mbpoll(port, "-r", address["battery_soc_ratio"], "127.0.0.1")
        assert registers(out) == {6: 6123}  # 0.6123 at 0.0001 per count
        limit = address["input_power_limit_w"]
        code, out = await mbpoll(port, "-t", "4:float", "-B", "-r", limit, "127.0.0.1", "1250000.5")
        assert code == 0, out
        [(point, value, peer)] = writes
        assert (point, value) == ("input_power_limit_w", 1250000.5)
        host, client_port = peer.rsplit(":", 1)  # who wrote: mbpoll's end of the connection
        assert host == "127.0.0.1" and int(client_port) not in (0, port)
        # A measured point is read-only: the device answers exception 2 and changes nothing.
        code, out = await mbpoll(port, "-r", address["mode"], "127.0.0.1", "1")
        assert code != 0 and "Illegal data address" in out
        assert len(writes) == 1
    finally:
        await server.stop()
