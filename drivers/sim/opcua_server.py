"""Serve a device map's nodes over OPC UA (asyncua server)."""

from __future__ import annotations

from asyncua import Node, Server, ua

from drivers.devicemap import DeviceMap
from drivers.opcua_client import opcua_endpoint


class OpcUaDeviceServer:
    def __init__(self, devmap: DeviceMap, host: str, port: int, device_id: str) -> None:
        self.map = devmap
        self.endpoint = opcua_endpoint(host, port, device_id)
        self.server = Server()
        self._nodes: dict[str, Node] = {}
        self._written: dict[str, float] = {}

    async def start(self, initial: dict[str, float]) -> None:
        await self.server.init()
        self.server.set_endpoint(self.endpoint)
        self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
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
