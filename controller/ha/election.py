"""Leader election in etcd: one controller of a site's pair leads, the other stands by.

Each node holds a lease of `ttl_s`, kept alive every `ttl_s / 4`, and campaigns with one
transaction: if the leader key does not exist, put it (this node's name, bound to the lease);
either way, read it back. The node whose lease holds the key leads; the key's create revision
is its fencing token, which only grows. The others watch the key and campaign again the moment
it is deleted (the leader's lease expired or was revoked), and re-read it every `ttl_s` in case
a watch went quiet.

A leader may write only inside the window `lease.py` computes from the send time of its newest
acknowledged keepalive; the control loop asks `current.may_write(now)` itself, so a leader cut
off from etcd stops writing on time even while this task waits on a call. Beyond that window
`current` turns to "unknown" once the lease has certainly expired, to "standby" at once when
etcd shows the key deleted or held by another lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import aetcd
from aetcd.exceptions import ClientError
from aetcd.rtypes import EventKind

from controller.ha.etcd import EtcdClient
from controller.ha.lease import Leadership, check_timing, lease_lost, write_from, write_until

log = logging.getLogger("gridpilot.ha")

RETRY_S = 0.05  # a failed call is tried again this soon (the client moved to the next member)


class LeaseLost(Exception):
    """etcd said the lease is gone, or no keepalive was acknowledged for a whole TTL."""


class PrepareFailed(Exception):
    """The new leader could not load the shared state: it gives the leadership back."""


class Elector:
    """Campaigns for `key` in etcd as `node` and keeps `current` up to date."""

    def __init__(
        self,
        client: aetcd.Client,
        key: bytes,
        node: str,
        ttl_s: float = 2.0,
        margin_s: float = 0.3,
        prepare: Callable[[int], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_timing(ttl_s, margin_s)
        self._client = client
        self.key = key
        self.node = node
        self.ttl_s = ttl_s
        self.margin_s = margin_s
        self._prepare = prepare
        self._clock = clock
        self._current = Leadership.unknown(node, time.time())
        self._lease_id: int | None = None
        self._renew_sent = -math.inf  # when the newest acknowledged grant/keepalive was sent
        self._token: int | None = None  # set only once prepare has run: then we lead
        self._won_at = 0.0
        self._resigned = asyncio.Event()
        self._last_error: str | None = None

    @property
    def current(self) -> Leadership:
        """The latest record: replaced whole on every change, never mutated."""
        return self._current

    # --- publishing --------------------------------------------------------------------
    def _set(self, record: Leadership) -> None:
        was = self._current
        if record.role == was.role:
            record = replace(record, since_s=was.since_s)
        self._current = record
        if (record.role, record.token) != (was.role, was.token):  # a role change, said once
            log.info(
                "ha role",
                extra={
                    "role": record.role,
                    "token": record.token,
                    "leader": record.leader,
                    "node": self.node,
                    "was": was.role,
                },
            )

    def _publish_leader(self) -> None:
        assert self._token is not None
        if self._resigned.is_set():
            return  # a last keepalive or campaign answer must not undo the resignation
        self._set(
            Leadership.leading(
                self.node,
                self._token,
                write_from(self._won_at, self.margin_s),
                write_until(self._renew_sent, self.ttl_s, self.margin_s),
                time.time(),
            )
        )

    def _step_down(self, leader: str | None, why: str) -> None:
        if self._token is not None:
            log.warning("ha stepping down", extra={"node": self.node, "why": why})
        self._token = None
        self._set(Leadership.standby(self.node, leader, time.time()))

    # --- the loop ----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Campaign until `stop` is set or `resign` is called; never raises (but is
        cancellable: a cancelled run leaves its lease to expire, as a crash would)."""
        backoff = self.ttl_s / 4
        while not (stop.is_set() or self._resigned.is_set()):
            try:
                await self._term(stop)
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and _cancelled():
                    raise  # our task was cancelled; any other is a call cancelled under us
                error = f"{type(exc).__name__}: {exc}"
                if error != self._last_error:  # said once while etcd stays out of reach
                    log.error(
                        "etcd out of reach: this controller does not write to the plant",
                        extra={"node": self.node, "error": error},
                    )
                self._last_error = error
            if stop.is_set() or self._resigned.is_set():
                return
            leader = None if self._token is not None else self._current.leader
            self._token = None
            self._set(Leadership.unknown(self.node, time.time(), leader))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)

    async def _term(self, stop: asyncio.Event) -> None:
        """One lease's life: keep it alive and campaign with it, until it is lost."""
        sent = self._clock()
        lease = await self._client.lease(math.ceil(self.ttl_s))
        self._lease_id, self._renew_sent = lease.id, sent
        self._last_error = None
        tasks = [
            asyncio.create_task(self._keep_alive(lease.id), name=f"ha:keepalive:{self.node}"),
            asyncio.create_task(self._observe(lease.id), name=f"ha:observe:{self.node}"),
            asyncio.create_task(stop.wait()),
            asyncio.create_task(self._resigned.wait()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        error = next((_failure(t) for t in done if _failure(t) is not None), None)
        if error is None:
            return  # stopped or resigned
        if not isinstance(error, LeaseLost):
            await self._revoke(lease.id)  # the lease may live: hand the key over now
        raise error

    async def _keep_alive(self, lease_id: int) -> None:
        period = self.ttl_s / 4
        next_at = self._renew_sent + period
        while True:
            await asyncio.sleep(max(0.0, next_at - self._clock()))
            sent = self._clock()
            deadline = self._renew_sent + self.ttl_s
            channel = getattr(self._client, "channel", None)
            try:
                # An attempt gets `period` (or what is left of the lease): a member that went
                # silent, or waits for raft to elect a new leader, is left for the next.
                reply = await asyncio.wait_for(
                    self._client.refresh_lease(lease_id), max(0.01, min(period, deadline - sent))
                )
            except (ClientError, TimeoutError) as exc:
                if lease_lost(self._renew_sent, self.ttl_s, self._clock()):
                    raise LeaseLost(
                        f"lease {lease_id:x}: no keepalive acknowledged for {self.ttl_s} s"
                    ) from exc
                log.debug("ha keepalive failed", extra={"node": self.node, "error": repr(exc)})
                if isinstance(exc, TimeoutError) and isinstance(self._client, EtcdClient):
                    await self._client.next_endpoint(channel, exc)
                next_at = self._clock() + RETRY_S
                continue
            if reply is None or reply.TTL <= 0:
                raise LeaseLost(f"lease {lease_id:x}: etcd says it expired")
            self._renew_sent = sent
            next_at = sent + period
            if self._token is not None:
                self._publish_leader()

    async def _observe(self, lease_id: int) -> None:
        while True:
            try:
                revision = await self._campaign(lease_id)
                await self._await_change(lease_id, revision)
            except (ClientError, TimeoutError) as exc:
                # etcd out of reach for now: the keepalive decides whether the lease lives.
                log.debug("ha campaign failed", extra={"node": self.node, "error": repr(exc)})
                await asyncio.sleep(RETRY_S)

    async def _campaign(self, lease_id: int) -> int:
        """Put the key if it is free; learn who holds it. Returns the revision read at."""
        tx = self._client.transactions
        _, responses = await self._client.transaction(
            compare=[tx.create(self.key) == 0],
            success=[tx.put(self.key, self.node.encode(), lease=lease_id), tx.get(self.key)],
            failure=[tx.get(self.key)],
        )
        held = responses[-1]
        if not held:  # deleted between the compare and the read: impossible in one txn
            raise ClientError(f"leader key {self.key!r}: not found after the campaign")
        kv = held[0][1]
        if kv.lease != lease_id:
            self._step_down(kv.value.decode(errors="replace"), "the key is held by another")
        elif self._token != kv.create_revision:
            await self._take_over(kv.create_revision)
        else:
            self._publish_leader()
        return kv.header.revision

    async def _take_over(self, token: int) -> None:
        won_at = self._clock()
        if self._token is not None:  # our key was deleted and created anew: a new term
            self._step_down(self.node, "the key was created anew")
        if self._prepare is not None:
            try:
                await self._prepare(token)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise PrepareFailed(f"token {token}: {type(exc).__name__}: {exc}") from exc
        self._token, self._won_at = token, won_at
        self._publish_leader()

    async def _await_change(self, lease_id: int, revision: int) -> None:
        """Until the key is deleted or put by another lease, or `ttl_s` passes (a re-read
        in case the watch went quiet). A leader that sees its key go steps down at once."""
        watch = await self._client.watch(self.key, start_revision=revision + 1)
        try:
            async with asyncio.timeout(self.ttl_s):
                async for event in watch:
                    if event.kind == EventKind.DELETE:
                        self._step_down(None, "the key was deleted")
                        return
                    if event.kv.lease != lease_id:
                        self._step_down(
                            event.kv.value.decode(errors="replace"), "key put by another"
                        )
                        return
        except TimeoutError:
            return
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch.cancel(), self.ttl_s / 4)

    # --- giving the leadership back ----------------------------------------------------
    async def resign(self) -> None:
        """Give up for good: revoke the lease so that the standby takes over at once. Call it
        after writes have stopped (a clean shutdown); `run` then returns."""
        self._resigned.set()
        self._token = None
        self._set(Leadership.standby(self.node, None, time.time()))
        lease_id, self._lease_id = self._lease_id, None
        if lease_id is not None:
            await self._revoke(lease_id)

    async def _revoke(self, lease_id: int) -> None:
        try:
            await self._client.revoke_lease(lease_id)
        except ClientError as exc:  # it expires on its own within ttl_s
            log.warning("ha lease revoke failed", extra={"node": self.node, "error": f"{exc}"})


def _cancelled() -> bool:
    """Whether the running task is being cancelled (rather than a call it awaited)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _failure(task: asyncio.Task[None]) -> BaseException | None:
    if task.cancelled():  # on its own: a call cancelled under it
        return RuntimeError(f"{task.get_name()}: cancelled")
    return task.exception()
