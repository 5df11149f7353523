"""Serve a device map's nodes over OPC UA (asyncua server).

Secured, a device behaves as a real one would: one endpoint, Basic256Sha256 SignAndEncrypt;
a client whose certificate it does not trust is refused at CreateSession, and no session is
activated but over a secure channel from a trusted certificate (a SecurityPolicy None channel
serves discovery only), then with a user name and password when the device has users."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from asyncua import Node, Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509

from drivers.devicemap import DeviceMap
from drivers.opcua_client import opcua_endpoint
from drivers.security import PeerTrust

log = logging.getLogger("gridpilot.sim")


@dataclass(frozen=True)
class DeviceSecurity:
    """A secured device's side: its certificate and key, and the certificates it trusts its
    clients by (a CA, or the controller's own)."""

    certificate: Path
    private_key: Path
    client_trust: tuple[Path, ...]


class DeviceAccess:
    """Who may use the device; asyncua's user manager, asked at every ActivateSession: over a
    secure channel from a trusted client only (when `trust` is given), then these names and
    passwords, nobody else (no users: anonymous)."""

    def __init__(self, device_id: str, trust: PeerTrust | None, users: dict[str, str]) -> None:
        self.device_id, self.trust, self.users = device_id, trust, users
        self.attempts: list[str | None] = []  # every user name tried, as a device's log shows

    def refuse_untrusted(self, cert: x509.Certificate | None) -> None:
        """End the exchange with a client the device does not trust, saying why in its log:
        one without a certificate (a SecurityPolicy None channel), or one it does not trust."""
        if self.trust is None:
            return
        if cert is None:
            self._refused("SecurityPolicy None", ua.StatusCodes.BadSecurityPolicyRejected)
        elif (why := self.trust.refusal(cert, "client")) is not None:
            self._refused(why, ua.StatusCodes.BadCertificateUntrusted)

    def _refused(self, why: str, status: int) -> NoReturn:
        log.warning("OPC UA client refused", extra={"device": self.device_id, "why": why})
        raise ServiceError(status)

    def get_user(self, iserver, username=None, password=None, certificate=None) -> User | None:
        self.attempts.append(username)
        # `certificate`: the secure channel's (none over SecurityPolicy None).
        self.refuse_untrusted(uacrypto.x509_from_der(certificate))
        if not self.users:
            return User(role=UserRole.User)
        expected = self.users.get(username or "")
        if expected is None or not hmac.compare_digest(expected, password or ""):
            return None
        return User(role=UserRole.User, name=username)


class OpcUaDeviceServer:
    """One device's nodes. With `security`: Basic256Sha256 SignAndEncrypt only, trusted
    clients only; with `users`, user name and password only."""

    def __init__(
        self,
        devmap: DeviceMap,
        host: str,
        port: int,
        device_id: str,
        security: DeviceSecurity | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.map = devmap
        self.endpoint = opcua_endpoint(host, port, device_id)
        self.security, self.users = security, users or {}
        trust = PeerTrust.from_files(security.client_trust) if security else None
        self.access = DeviceAccess(device_id, trust, self.users) if security or self.users else None
        self.server = Server(user_manager=self.access)
        self._nodes: dict[str, Node] = {}
        self._written: dict[str, float] = {}

    async def start(self, initial: dict[str, float]) -> None:
        await self.server.init()
        self.server.set_endpoint(self.endpoint)
        if self.security is None:
            self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            self.server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            await self.server.load_certificate(str(self.security.certificate))
            await self.server.load_private_key(str(self.security.private_key))
            self.server.set_certificate_validator(self._check_client)  # at CreateSession
        if self.users:
            self.server.set_identity_tokens([ua.UserNameIdentityToken])
        elif self.security is not None:
            self.server.set_identity_tokens([ua.AnonymousIdentityToken])
        ns = await self.server.register_namespace(self.map.namespace)
        folder = await self.server.nodes.objects.add_object(ns, self.map.kind.upper())
        for name, p in self.map.points.items():
            node = await folder.add_variable(
                ua.NodeId(p.node, ns), name, float(initial.get(name, 0.0)), ua.VariantType.Double
            )
            if p.writable:
                await node.set_writable()
                self._written[name] = float(initial.get(name, 0.0))
            self._nodes[name] = node
        await self.server.start()

    async def _check_client(self, cert: x509.Certificate, _app: ua.ApplicationDescription) -> None:
        assert self.access is not None
        self.access.refuse_untrusted(cert)

    async def publish(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            if name not in self._written:
                await self.server.write_attribute_value(
                    self._nodes[name].nodeid, ua.DataValue(ua.Variant(value, ua.VariantType.Double))
                )

    async def take_writes(self) -> dict[str, float]:
        """Writable nodes that clients changed since the last call."""
        changed: dict[str, float] = {}
        for name in self._written:
            value = float(await self._nodes[name].read_value())
            if value != self._written[name] and self.map.points[name].in_range(value):
                changed[name] = self._written[name] = value
        return changed

    async def stop(self) -> None:
        await self.server.stop()
