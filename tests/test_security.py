"""Secured links end to end: Modbus/TCP Security (mutual TLS) and OPC UA Basic256Sha256
SignAndEncrypt with a user name and password, both with certificates from `gridpilot certs`.
A client without the right credentials is refused, and the driver reports it; a server the
controller does not trust is refused before it is sent anything secret."""

from __future__ import annotations

import contextlib
import copy
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from controller.config import DeviceConfig, SiteConfig
from controller.service import make_driver
from controller.sitefile import parse_site, plant_of
from drivers.certs import CONTROLLER_URI, SiteCerts, make_site_certs
from drivers.maploader import load_map
from drivers.sim.opcua_server import DeviceSecurity, OpcUaDeviceServer
from drivers.sim.stack import SimulatorStack
from tests.plant import until
from tests.processes import GRIDPILOT
from tests.sites import free_port

PASSWORD = "s3cret-Plant"


@pytest.fixture
async def secured(site_data: dict, tmp_path: Path):
    certs = make_site_certs(tmp_path / "certs", ["127.0.0.1"])
    data = copy.deepcopy(site_data)
    data["simulation"] = {
        **data.get("simulation", {}),
        "security": {
            "certificate": str(certs.device.certificate),
            "private_key": str(certs.device.private_key),
            "client_ca": str(certs.ca),
            "users": {"gridpilot": PASSWORD},
        },
    }
    site = parse_site(data)
    stack = SimulatorStack(plant_of(site))
    await stack.start()
    yield site, certs
    await stack.stop()


def secure(device, certs, client=None, **extra):
    """The device's config with a secured link: our certificate (or `client`'s), and whom we
    trust: the site's CA (Modbus), the device's own certificate, pinned (OPC UA)."""
    client = client or certs.controller
    trust = (
        {"peer_ca": [certs.ca]}
        if device.kind != "cdu"
        else {"peer_certificate": certs.device.certificate}
    )
    security = {
        "certificate": client.certificate,
        "private_key": client.private_key,
        **trust,
        **extra,
    }
    data = {**device.model_dump(), "security": security, "timeout_s": 3.0}
    return type(device).model_validate(data)  # validated as a site file's device would be


async def test_secured_links_read_and_write(secured, tmp_path: Path):
    site, certs = secured
    secret = tmp_path / "cdu-password"
    secret.write_text("s3cret-Plant\n")  # as a mounted secret would hold it
    ups = next(d for d in site.devices if d.kind == "ups")
    cdu = next(d for d in site.devices if d.kind == "cdu")
    drivers = [
        make_driver(secure(ups, certs)),
        make_driver(secure(cdu, certs, username="gridpilot", password_file=secret)),
    ]
    for d in drivers:
        d.start()
    try:
        await until(lambda: all(d.values for d in drivers), 20, "secured polls")
        assert drivers[0].values["rated_power_w"].value > 0
        assert drivers[1].values["heat_load_w"].value > 0
        await drivers[0].write("input_power_limit_w", 2e6)
        await drivers[1].write("supply_temperature_setpoint_c", 34.0)
    finally:
        for d in drivers:
            await d.stop()


async def test_wrong_credentials_are_refused_and_reported(secured, tmp_path: Path):
    site, certs = secured
    stranger = make_site_certs(tmp_path / "stranger", ["127.0.0.1"])  # another CA's client
    ups = next(d for d in site.devices if d.kind == "ups")
    cdu = next(d for d in site.devices if d.kind == "cdu")
    cases = [  # (config, the error kind the driver counts)
        (secure(ups, certs, client=stranger.controller), "connection"),  # a stranger's certificate
        (secure(ups, certs, peer_ca=[stranger.ca]), "security"),  # a device we do not trust
        (ups, "connection"),  # plain Modbus/TCP to a TLS port
        (secure(cdu, certs, username="gridpilot", password="wrong"), "security"),
        (cdu, "security"),  # no security at all
    ]
    for config, kind in cases:
        driver = make_driver(config)
        driver.start()
        try:
            await until(lambda d=driver: d.counters.errors_total > 0, 20, f"{config.id} refused")
            assert not driver.values and not driver.connected
            assert driver.counters.errors_by_kind.get(kind), driver.counters
        finally:
            await driver.stop()


def test_security_config_is_checked(site: SiteConfig, tmp_path: Path):
    certs = make_site_certs(tmp_path, ["127.0.0.1"])
    cdu = next(d for d in site.devices if d.kind == "cdu")
    with pytest.raises(ValueError, match="username and a password go together"):
        secure(cdu, certs, username="gridpilot")
    with pytest.raises(ValueError, match="not both"):
        secure(cdu, certs, username="u", password="p", password_file=certs.ca)
    with pytest.raises(ValueError, match="does not point to a file"):
        secure(cdu, certs, peer_certificate=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match=f"device {cdu.id}: security needs peer_certificate"):
        secure(cdu, certs, peer_certificate=None)


@contextlib.asynccontextmanager
async def opcua_cdu(
    certs: SiteCerts, client_ca: Path, shown: dict[str, float]
) -> AsyncIterator[OpcUaDeviceServer]:
    """A secured OPC UA CDU alone on a free loopback port (the whole plant takes longer),
    with `certs`' device certificate, trusting clients `client_ca` signed, showing `shown`."""
    server = OpcUaDeviceServer(
        load_map("cdu"),
        "127.0.0.1",
        free_port(),
        "cdu-1",
        DeviceSecurity(certs.device.certificate, certs.device.private_key, (client_ca,)),
        {"gridpilot": PASSWORD},
    )
    await server.start(shown)
    try:
        yield server
    finally:
        await server.stop()


def cdu_config(server: OpcUaDeviceServer, certs: SiteCerts, **trust: object) -> DeviceConfig:
    """The controller's config for that CDU: our certificate, user and password, and `trust`."""
    security = {
        "certificate": certs.controller.certificate,
        "private_key": certs.controller.private_key,
        "username": "gridpilot",
        "password": PASSWORD,
        **trust,
    }
    port = urlparse(server.endpoint).port
    return DeviceConfig.model_validate(
        {"id": "cdu-1", "kind": "cdu", "port": port, "timeout_s": 3.0, "security": security}
    )


async def test_a_rogue_server_is_refused_before_it_sees_the_password(tmp_path: Path):
    """Another server at the device's address, with a certificate of its own making, showing
    a fake 99 °C and taking any client of the site: refused as a `security` error whether we
    pin the device's certificate or trust the site's CA. No login ever reaches it, and its
    value never reaches the controller."""
    site = make_site_certs(tmp_path / "site", ["127.0.0.1"])
    rogue = make_site_certs(tmp_path / "rogue", ["127.0.0.1"])
    trusts = [
        ({"peer_certificate": site.device.certificate}, "is not the pinned one"),
        ({"peer_ca": [site.ca]}, "is not signed by a trusted CA"),
    ]
    async with opcua_cdu(rogue, site.ca, {"supply_temperature_c": 99.0}) as server:
        for trust, why in trusts:
            driver = make_driver(cdu_config(server, site, **trust))
            driver.start()
            try:
                await until(lambda d=driver: d.counters.errors_total > 0, 10, "the refusal")
            finally:
                await driver.stop()
            assert not driver.values and not driver.connected
            assert set(driver.counters.errors_by_kind) == {"security"}, driver.counters
            error = driver.counters.last_error or ""
            assert "device cdu-1" in error and server.endpoint in error and why in error
        assert server.access is not None and server.access.attempts == []


async def test_a_device_is_trusted_by_its_pinned_certificate_or_its_ca(tmp_path: Path):
    certs = make_site_certs(tmp_path, ["127.0.0.1"])
    async with opcua_cdu(certs, certs.ca, {"supply_temperature_c": 31.5}) as server:
        for trust in ({"peer_certificate": certs.device.certificate}, {"peer_ca": [certs.ca]}):
            driver = make_driver(cdu_config(server, certs, **trust))
            driver.start()
            try:
                await until(lambda d=driver: d.values, 10, f"a poll trusting {trust}")
            finally:
                await driver.stop()
            assert driver.values["supply_temperature_c"].value == 31.5
            assert driver.counters.errors_total == 0


async def test_the_simulator_refuses_security_none_and_unknown_certificates(tmp_path: Path):
    """What a real device does, shown with asyncua's own client: a SecurityPolicy None channel
    serves discovery, but its session is never activated; a client certificate the device
    does not trust is refused at CreateSession, before any login."""
    certs = make_site_certs(tmp_path / "site", ["127.0.0.1"])
    stranger = make_site_certs(tmp_path / "stranger", ["127.0.0.1"])
    async with opcua_cdu(certs, certs.ca, {}) as server:
        careless = Client(server.endpoint, timeout=3)  # SecurityPolicy None
        await careless.connect_socket()
        try:
            await careless.send_hello()
            await careless.open_secure_channel()
            with pytest.raises(ua.UaError, match="No matching endpoints"):
                await careless.create_session()  # asyncua stops here; a careless client goes on
            with pytest.raises(ua.uaerrors.BadSecurityPolicyRejected):
                await careless.activate_session(username="gridpilot", password=PASSWORD)
            with pytest.raises(ua.uaerrors.BadSessionNotActivated):
                await careless.nodes.server_state.read_value()
        finally:
            careless.disconnect_socket()

        unknown = Client(server.endpoint, timeout=3)
        unknown.application_uri = CONTROLLER_URI
        await unknown.set_security(
            SecurityPolicyBasic256Sha256,
            str(stranger.controller.certificate),
            str(stranger.controller.private_key),
            server_certificate=str(certs.device.certificate),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        unknown.set_user("gridpilot")
        unknown.set_password(PASSWORD)
        with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
            await unknown.connect()
        assert server.access is not None
        assert server.access.attempts == ["gridpilot"]  # the careless client's only


def test_check_config_refuses_security_that_trusts_nobody(tmp_path: Path, site_data: dict):
    certs = make_site_certs(tmp_path / "certs", ["127.0.0.1"])
    data = copy.deepcopy(site_data)
    cdu = next(d for m in data["modules"] for d in m["devices"] if d["kind"] == "cdu")
    cdu["security"] = {
        "certificate": str(certs.controller.certificate),
        "private_key": str(certs.controller.private_key),
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [*GRIDPILOT, "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert f"device {cdu['id']}: security needs peer_certificate" in proc.stderr
    assert "peer_ca" in proc.stderr and "Traceback" not in proc.stderr
