"""OPC UA driver: every node of the map read in one batched request per poll, or (mode
"subscribe") delivered by a data-change subscription that each poll takes the latest of.

A subscription sends only changes, so a quiet value is not an old one; what tells a stalled
one apart is the device's own heartbeat node (the map's liveness point), which changes every
second, and the session's loss, which asyncua's supervisor reports.

Secured, the server's certificate is checked against the pinned one or the trusted CAs before
anything secret is sent: see `_trusted_server_certificate`."""

from __future__ import annotations

from asyncua import Client, Node, ua
from asyncua.crypto import uacrypto
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from drivers.base import DeviceDriver, DeviceRejectedError, DeviceSecurityError, DriverSettings
from drivers.certs import CONTROLLER_URI
from drivers.devicemap import DeviceMap
from drivers.security import LinkSecurity, PeerTrust


def opcua_endpoint(host: str, port: int, device_id: str) -> str:
    return f"opc.tcp://{host}:{port}/gridpilot/{device_id}"


class OpcUaDriver(DeviceDriver):
    def __init__(
        self,
        device_id: str,
        devmap: DeviceMap,
        settings: DriverSettings,
        host: str,
        port: int,
        security: LinkSecurity | None = None,
        subscribe: bool = False,
    ) -> None:
        super().__init__(device_id, devmap, settings)
        self.endpoint = opcua_endpoint(host, port, device_id)
        self.security = security
        self.trust = PeerTrust.from_files(security.trusted_files) if security else None
        self.subscribe = subscribe
        self._client: Client | None = None
        self._nodes: dict[str, Node] = {}
        self._changes: _Changes | None = None

    async def _connect(self) -> None:
        client = Client(self.endpoint, timeout=self.settings.timeout_s)
        if self.security is not None:
            await self._secure(client, self.security)
        try:
            await client.connect()
        except (ua.UaStatusCodeError, ua.UaError) as exc:  # refused, or no endpoint to match
            raise self._security_error(str(exc)) from exc
        try:
            ns = await client.get_namespace_index(self.map.namespace)
        except Exception:
            await client.disconnect()
            raise
        self._client = client
        self._nodes = {
            name: client.get_node(ua.NodeId(p.node, ns)) for name, p in self.map.points.items()
        }
        if self.subscribe:
            changes = _Changes({node.nodeid: name for name, node in self._nodes.items()})
            client.connection_lost_callback = changes.connection_lost
            period_ms = self.settings.poll_period_s * 1000.0
            subscription = await client.create_subscription(period_ms, changes)
            await subscription.subscribe_data_change(list(self._nodes.values()))
            self._changes = changes

    async def _secure(self, client: Client, sec: LinkSecurity) -> None:
        client.application_uri = CONTROLLER_URI  # as our certificate names us
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            str(sec.certificate),
            str(sec.private_key),
            server_certificate=await self._trusted_server_certificate(client),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        if sec.username is not None:
            client.set_user(sec.username)
            client.set_password(sec.password or "")

    async def _trusted_server_certificate(self, client: Client) -> bytes:
        """The certificate the server's endpoint shows (asked over a discovery channel, which
        carries nothing secret), once it is the pinned one or a trusted CA signed it.

        The secure channel is then encrypted for that certificate alone, and asyncua ends a
        session whose server signs with another one before the password is sent: whoever
        else answers at the address learns nothing, and is refused as a `security` error."""
        assert self.trust is not None
        endpoints = await client.connect_and_get_server_endpoints()
        try:
            endpoint = Client.find_endpoint(
                endpoints, ua.MessageSecurityMode.SignAndEncrypt, SecurityPolicyBasic256Sha256.URI
            )
        except ua.UaError as exc:
            raise self._security_error("it offers no Basic256Sha256 SignAndEncrypt") from exc
        cert = uacrypto.x509_from_der(endpoint.ServerCertificate)
        if cert is None:
            raise self._security_error("it shows no certificate")
        if (why := self.trust.refusal(cert, "server")) is not None:
            raise self._security_error(f"not trusted: {why}")
        return uacrypto.der_from_x509(cert)

    def _security_error(self, why: str) -> DeviceSecurityError:
        return DeviceSecurityError(f"device {self.device_id}, server {self.endpoint}: {why}")

    async def _read_all(self) -> dict[str, float]:
        assert self._client is not None
        if self._changes is not None:
            if self._changes.lost is not None:
                raise self._changes.lost
            return dict(self._changes.latest)
        names = list(self._nodes)
        raw = await self._client.read_values([self._nodes[n] for n in names])
        return {n: float(v) for n, v in zip(names, raw, strict=True)}

    async def _write(self, point: str, value: float) -> None:
        try:
            await self._nodes[point].write_value(
                ua.DataValue(ua.Variant(float(value), ua.VariantType.Double))
            )
        except ua.UaStatusCodeError as exc:  # the server refused it: the session is fine
            raise DeviceRejectedError(f"write of node {self.map.point(point).node}: {exc}") from exc

    async def _close(self) -> None:
        self._changes = None
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.disconnect()
            except Exception:  # the link may already be gone
                client.disconnect_socket()


class _Changes:
    """asyncua's subscription handler: the latest value of each node, and the loss, if any."""

    def __init__(self, names: dict[ua.NodeId, str]) -> None:
        self.names = names
        self.latest: dict[str, float] = {}
        self.lost: ConnectionError | None = None

    def datachange_notification(self, node: Node, value: object, data: object) -> None:
        self.latest[self.names[node.nodeid]] = float(value)  # type: ignore[arg-type]

    def status_change_notification(self, status: object) -> None:
        self.lost = ConnectionError(f"subscription ended: {status}")

    async def connection_lost(self, exc: Exception) -> None:
        self.lost = ConnectionError(f"session lost: {exc}")
