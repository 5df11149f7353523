"""The etcd client for a site: aetcd's client on a channel we build ourselves (TLS or plain,
optional user and password), moving to the next endpoint when one fails.

aetcd connects to one host. A site runs a cluster of three or five members, and the elector
must keep its lease alive while any quorum stands, so a call that finds its member gone
(connection refused, reset, or no answer within `timeout_s`) closes that channel: the next call
connects to the next endpoint. The failed call still raises (its caller retries; a keepalive
retries at once), so a killed member costs one failed call, not a TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aetcd
import grpc
from aetcd import rpc, watcher
from aetcd.client import _handle_errors  # aetcd's own grpc error → ClientError mapping
from aetcd.exceptions import ConnectionFailedError, ConnectionTimeoutError, WatchTimeoutError

log = logging.getLogger("gridpilot.ha")

# What says the member (or the way to it) is gone, rather than that the request was wrong.
ENDPOINT_ERRORS = (ConnectionFailedError, ConnectionTimeoutError, WatchTimeoutError)


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: tuple[str, ...]  # "host:port"
    timeout_s: float = 1.0  # every call, and connecting
    ca: Path | None = None  # TLS when set
    certificate: Path | None = None  # client certificate (mutual TLS), with private_key
    private_key: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("etcd endpoints: none given")
        for endpoint in self.endpoints:
            host, _, port = endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"etcd endpoint {endpoint!r}: expected host:port")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("etcd TLS: certificate and private_key go together")
        if self.certificate is not None and self.ca is None:
            raise ValueError("etcd TLS: a client certificate needs the ca too")
        if (self.username is None) != (self.password is None):
            raise ValueError("etcd auth: username and password go together")
        if not self.timeout_s > 0:
            raise ValueError(f"etcd timeout_s = {self.timeout_s!r}: must be above 0")


def _read(what: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"etcd TLS {what} {path}: {exc}") from exc


def _fails_over[**P, R](method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """An aetcd call that, when its member is gone, moves the client to the next endpoint."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        client = args[0]
        assert isinstance(client, EtcdClient)
        await client.connect()
        channel = client.channel
        try:
            answer = await method(*args, **kwargs)
        except ENDPOINT_ERRORS as exc:
            await client.next_endpoint(channel, exc)
            raise
        client._last_failure = None  # a member answers: the next failure is news again
        return answer

    return call


MAX_ANSWER_BYTES = 256 * 1024 * 1024


class EtcdClient(aetcd.Client):
    """aetcd's client over several endpoints, with TLS and auth from `EtcdSettings`."""

    def __init__(self, settings: EtcdSettings) -> None:
        host, _, port = settings.endpoints[0].rpartition(":")
        super().__init__(
            host=host,
            port=int(port),
            username=settings.username,
            password=settings.password,
            timeout=settings.timeout_s,  # aetcd's hint says int; it means seconds
            connect_wait_timeout=settings.timeout_s,
            # A new leader reads the shared state in one answer: gRPC's default cap (4 MB)
            # is ~15k audit rows.
            options={"grpc.max_receive_message_length": MAX_ANSWER_BYTES},
        )
        self.settings = settings
        self._index = 0
        self._last_failure: tuple[str, str] | None = None  # (endpoint, error kind) said last
        self._ca = _read("ca", settings.ca)
        self._certificate = _read("certificate", settings.certificate)
        self._private_key = _read("private_key", settings.private_key)
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        """The endpoint the client talks to now (or will connect to next)."""
        return self.settings.endpoints[self._index]

    def _open_channel(self, target: str) -> grpc.aio.Channel:
        options = list(self._options.items())
        if self._ca is None:
            return grpc.aio.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._ca,
            private_key=self._private_key,
            certificate_chain=self._certificate,
        )
        return grpc.aio.secure_channel(target, credentials, options=options)

    @_handle_errors
    async def connect(self) -> None:
        """As aetcd's, on the current endpoint's channel; a failed login moves on."""
        if self._connected.is_set():
            return
        if self._is_connecting:  # another task is connecting: wait for it
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        self._is_connecting = True
        try:
            channel = self._open_channel(self.endpoint)
            self.channel = channel
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(channel)
                request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                try:
                    resp = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ):
                        await self.next_endpoint(channel, exc)
                    else:
                        self._drop(channel)
                    raise
                self.metadata = (("token", resp.token),)
            self.kvstub = rpc.KVStub(channel)
            self.clusterstub = rpc.ClusterStub(channel)
            self.leasestub = rpc.LeaseStub(channel)
            self.maintenancestub = rpc.MaintenanceStub(channel)
            self._watcher = watcher.Watcher(
                rpc.WatchStub(channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False

    async def next_endpoint(
        self, failed: grpc.aio.Channel | None = None, error: BaseException | None = None
    ) -> None:
        """Close the current channel; the next call connects to the next endpoint.

        `failed` is the channel the caller's call used: when several calls fail on one
        channel, only the first moves the client on."""
        if failed is not None and failed is not self.channel:
            return
        was = self.endpoint
        self._index = (self._index + 1) % len(self.settings.endpoints)
        said = (was, type(error).__name__)
        if said != self._last_failure:  # once per member and kind while it stays down
            log.warning(
                "etcd endpoint failed, moving on",
                extra={"endpoint": was, "next": self.endpoint, "error": repr(error)},
            )
        self._last_failure = said
        old_watcher = self._watcher
        self._drop(self.channel)
        if old_watcher is not None:
            await old_watcher.shutdown()  # ends open watches: their owners watch again

    def _drop(self, channel: grpc.aio.Channel | None) -> None:
        """Forget the channel now; close it once calls on it have run out their timeout.

        Closing at once would cancel calls other tasks are awaiting on it, which reach them as
        a CancelledError they did not ask for."""
        self._init_channel_attrs()
        self._connected.clear()
        if channel is not None:
            grace = float(self._timeout or 0) + 0.5
            task = asyncio.get_running_loop().create_task(channel.close(grace))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        await super().close()
        for task in list(self._closing):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # The calls the elector and the shared state make, each moving on when its member is gone.
    get = _fails_over(aetcd.Client.get)
    get_prefix = _fails_over(aetcd.Client.get_prefix)
    put = _fails_over(aetcd.Client.put)
    delete = _fails_over(aetcd.Client.delete)
    transaction = _fails_over(aetcd.Client.transaction)
    lease = _fails_over(aetcd.Client.lease)
    revoke_lease = _fails_over(aetcd.Client.revoke_lease)
    refresh_lease = _fails_over(aetcd.Client.refresh_lease)
    get_lease_info = _fails_over(aetcd.Client.get_lease_info)
    watch = _fails_over(aetcd.Client.watch)
    status = _fails_over(aetcd.Client.status)
