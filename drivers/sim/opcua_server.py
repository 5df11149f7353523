"""Serve a device map's nodes over OPC UA (asyncua server)."""

from __future__ import annotations

import hmac
from pathlib import Path

from asyncua import Node, Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from drivers.devicemap import DeviceMap
from drivers.opcua_client import opcua_endpoint


class PasswordUsers:
    """asyncua's user manager: these names and passwords, nobody else (no anonymous)."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(self, iserver, username=None, password=None, certificate=None) -> User | None:
        expected = self.users.get(username or "")
        if expected is None or not hmac.compare_digest(expected, password or ""):
            return None
        return User(role=UserRole.User, name=username)


class OpcUaDeviceServer:
    """One device's nodes. With `security` (certificate, key): Basic256Sha256 SignAndEncrypt
    only, and with `users`, user name and password only."""

    def __init__(
        self,
        devmap: DeviceMap,
        host: str,
        port: int,
        device_id: str,
        security: tuple[Path, Path] | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.map = devmap
        self.endpoint = opcua_endpoint(host, port, device_id)
        self.security, self.users = security, users or {}
        self.server = Server(user_manager=PasswordUsers(self.users) if self.users else None)
        self._nodes: dict[str, Node] = {}
        self._written: dict[str, float] = {}

    async def start(self, initial: dict[str, float]) -> None:
        await self.server.init()
        self.server.set_endpoint(self.endpoint)
        if self.security is None:
            self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            self.server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            await self.server.load_certificate(str(self.security[0]))
            await self.server.load_private_key(str(self.security[1]))
        if self.users:
            self.server.set_identity_tokens([ua.UserNameIdentityToken])
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
