"""This controller as a node of an HA pair: the one place that joins the election, the shared
state and the rest of the controller.

- The loop and every driver ask `may_write()` (through the `Leadership` record): only the
  leader, while its lease holds, writes to the plant.
- Before it leads, a node loads the shared state from etcd into its SQLite file and takes it
  as the state in force; a standby follows the leader's changes into its file meanwhile.
- A change an operator makes is answered only once etcd holds it (`replicated`): whatever the
  leader acknowledged, the next leader has. A standby refuses changes (503, naming the leader).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import TimeoutError as FutureTimeout

from controller.ha.config import HAConfig
from controller.ha.election import Elector
from controller.ha.etcd import EtcdClient, EtcdSettings
from controller.ha.lease import Leadership
from controller.ha.replica import NotLeader, Replica, ReplicaUnavailable
from controller.operations import Operations
from controller.opsdb import SYSTEM, OpsDB

log = logging.getLogger("gridpilot.ha")
PUBLISH_PERIOD_S = 0.25  # what ticks record (reverts, events' edges) reaches etcd this often


class NotAcknowledged(Exception):
    """A change this node cannot acknowledge: it is not the leader, or etcd did not take it."""

    def __init__(self, title: str, detail: str) -> None:
        super().__init__(detail)
        self.title, self.detail = title, detail


def etcd_settings(cfg: HAConfig) -> EtcdSettings:
    tls = cfg.tls
    return EtcdSettings(
        endpoints=tuple(cfg.endpoints),
        timeout_s=cfg.timeout_s,
        ca=tls.ca if tls else None,
        certificate=tls.certificate if tls else None,
        private_key=tls.private_key if tls else None,
        username=cfg.username,
        password=cfg.password_text(),
    )


class HaNode:
    def __init__(self, cfg: HAConfig, site: str, db: OpsDB, ops: Operations) -> None:
        self.cfg, self.db, self.ops = cfg, db, ops
        self.node = cfg.node_name
        prefix = cfg.site_prefix(site)
        self.leader_key = prefix + b"/leader"
        self.client = EtcdClient(etcd_settings(cfg))
        self.replica = Replica(db, self.client, prefix, self.leader_key)
        self.elector = Elector(
            self.client, self.leader_key, self.node, cfg.ttl_s, cfg.margin_s, self._prepare
        )
        ops.records = self.may_write  # the leader records what its ticks see; a standby copies
        self._loop: asyncio.AbstractEventLoop | None = None
        self._following: asyncio.Task[None] | None = None
        self._follow_stop = asyncio.Event()

    # --- what the rest of the controller asks --------------------------------------------
    def leadership(self) -> Leadership:
        return self.elector.current

    def may_write(self) -> bool:
        return self.elector.current.may_write(time.monotonic())

    def check_change(self) -> None:
        """Before a change is made (the bridge's command thread): only the leader takes one."""
        lead = self.elector.current
        if not lead.may_write(time.monotonic()):
            raise NotAcknowledged(
                "Standby",
                f"this controller ({self.node}) is {lead.role}; changes go to the leader "
                f"({lead.leader or 'none at the moment'}); nothing was changed",
            )

    def replicated(self, timeout_s: float) -> None:
        """After a change is stored here: answered only once etcd holds it (the bridge's
        command thread waits; the loop does not)."""
        lead = self.elector.current
        assert self._loop is not None and lead.token is not None
        future = asyncio.run_coroutine_threadsafe(self.replica.publish(lead.token), self._loop)
        try:
            future.result(timeout_s)
        except (NotLeader, ReplicaUnavailable, FutureTimeout, OSError) as exc:
            future.cancel()
            log.warning("change not replicated", extra={"error": str(exc), "token": lead.token})
            raise NotAcknowledged(
                "Not replicated",
                f"stored on {self.node} but not in etcd ({type(exc).__name__}: {exc}): not "
                "acknowledged; it may or may not stay in force, read it back before trying again",
            ) from None

    # --- the node's tasks ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Elect, follow while standby, publish while leading; until `stop`."""
        self._loop = asyncio.get_running_loop()
        tasks = [
            asyncio.create_task(self.elector.run(stop), name="ha:elector"),
            asyncio.create_task(self._follow_while_standby(stop), name="ha:follow"),
            asyncio.create_task(self._publish_while_leading(stop), name="ha:publish"),
        ]
        try:
            await stop.wait()
        finally:
            self._follow_stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """After the loop has stopped writing: give the lease back (the standby leads at once
        rather than after the TTL), then close the client."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.elector.resign(), self.cfg.timeout_s)
        with contextlib.suppress(Exception):
            await self.client.close()

    async def _prepare(self, token: int) -> None:
        """Won the election: the shared state into the file and in force before any write."""
        started = time.monotonic()
        await self._stop_following()
        revision = await self.replica.load(token)  # the first leader seeds etcd from its file
        await asyncio.to_thread(self.ops.reload)
        # Audited (and published with the next changes) as it leads, not before: the state
        # it writes with is in force now, and each second here is a second of fail-over. The
        # operators' writer stores it (a locked disk: retried in order, never lost).
        took = {"node": self.node, "token": token}
        self.ops.writer.put(lambda: self.db.audit(SYSTEM, "ha.lead", None, took), "audit ha.lead")
        log.info(
            "leading",
            extra={
                "node": self.node,
                "token": token,
                "revision": revision,
                "prepare_ms": round((time.monotonic() - started) * 1e3, 1),
            },
        )

    async def _stop_following(self) -> None:
        self._follow_stop.set()
        if self._following is not None:
            await asyncio.gather(self._following, return_exceptions=True)
            self._following = None

    def _reload_soon(self) -> None:
        """The leader's changes are in the file: in force, on a thread (never the loop's)."""
        assert self._loop is not None
        self._loop.run_in_executor(None, self.ops.reload)

    async def _follow_while_standby(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            lead = self.elector.current
            if lead.role != "leader" and self._following is None:
                self._follow_stop = asyncio.Event()
                self._following = asyncio.create_task(
                    self.replica.follow(self._follow_stop, self._reload_soon), name="ha:replica"
                )
            elif self._following is not None and self._following.done():
                self._following = None  # follow ended (leading now, or stopping)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PUBLISH_PERIOD_S)

    async def _publish_while_leading(self, stop: asyncio.Event) -> None:
        failing = False
        while not stop.is_set():
            lead = self.elector.current
            if lead.token is not None and lead.may_write(time.monotonic()):
                try:
                    await self.replica.publish(lead.token)
                    if failing:
                        log.info("replication recovered", extra={"token": lead.token})
                    failing = False
                except (NotLeader, ReplicaUnavailable) as exc:
                    if not failing:
                        log.warning(
                            "replication failing", extra={"error": str(exc), "token": lead.token}
                        )
                    failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PUBLISH_PERIOD_S)
