"""The operators' state shared through etcd: the rows of the replicated SQLite tables.

Each row is one key, `{prefix}/db/{table}/{key}`, its value the row as JSON (BLOBs in base64).
The leader publishes its journal (the rows it changed, in order) in etcd transactions that
succeed only while it still holds the leader key it was elected with (the fencing token: the
key's create revision), so a deposed leader can never write the shared state. What `publish`
returned is in etcd: a standby promoted after the leader's crash loads it.

`{prefix}/db/seeded` says the shared state exists. Until it does (the first HA start), the
first leader's file is the state: it seeds etcd with all of its rows and writes the marker
last. From then on etcd is the truth: a node loads it whole before it leads, and a standby
follows its changes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aetcd
from aetcd import exceptions as etcd_errors
from aetcd.rtypes import Event, EventKind
from aetcd.utils import prefix_range_end

from controller.opsdb import REPLICATED, Change, JournalEntry, OpsDB

log = logging.getLogger("gridpilot.ha.replica")
T = TypeVar("T")

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
MAX_TXN_BYTES = 1 << 20  # under etcd's default --max-request-bytes (1.5 MiB), with room
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
WATCH_CANCEL_S = 1.0  # a follower stopping does not wait longer on etcd to end its watch
# etcd unreachable, no quorum, a timeout: the call may succeed later. Anything else is a bug.
UNAVAILABLE = (
    etcd_errors.ConnectionFailedError,
    etcd_errors.ConnectionTimeoutError,
    etcd_errors.InternalError,
)


class NotLeader(Exception):
    """The leader key is not the one this node was elected with: nothing was written."""


class ReplicaUnavailable(Exception):
    """etcd could not be reached (or had no quorum) in time; the call may be tried again."""


def encode_row(row: dict[str, Any]) -> bytes:
    """A row as JSON; a BLOB (a key's salt and hash) as `{"b64": ...}`."""
    plain = {
        k: {"b64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v
        for k, v in row.items()
    }
    return json.dumps(plain, separators=(",", ":")).encode()


def decode_row(value: bytes) -> dict[str, Any]:
    return {
        k: base64.b64decode(v["b64"]) if isinstance(v, dict) else v
        for k, v in json.loads(value).items()
    }


def _size(op: Any) -> int:
    return len(op.key) + len(getattr(op, "value", b""))


def _batches(ops: list[Any]) -> list[list[Any]]:
    """`ops` in order, cut into transactions etcd takes (ops and bytes each under its limit)."""
    batches: list[list[Any]] = []
    size = 0
    for op in ops:
        if not batches or len(batches[-1]) == MAX_TXN_OPS or size + _size(op) > MAX_TXN_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(op)
        size += _size(op)
    return batches


class Replica:
    def __init__(self, db: OpsDB, client: aetcd.Client, prefix: bytes, leader_key: bytes) -> None:
        """The replica of `db`'s replicated tables under `prefix` (b"/gridpilot/site-a"),
        fenced by `leader_key`. Turns the file's journal on: a replica exists only with HA."""
        self._db = db
        self._client = client
        self._rows = prefix.rstrip(b"/") + b"/db/"
        self._marker = self._rows + b"seeded"
        self._leader_key = leader_key
        self._lock = asyncio.Lock()  # publish and load never interleave on one node
        db.set_journalling(True)

    def key_of(self, table: str, pk: str) -> bytes:
        return self._rows + f"{table}/{pk}".encode()

    def _parse(self, key: bytes) -> tuple[str, str] | None:
        """(table, key) of a row's etcd key; None for the seeded marker or a table this
        version does not replicate (a newer one's: skipped, logged)."""
        table, _, pk = key[len(self._rows) :].decode(errors="replace").partition("/")
        if table in REPLICATED and pk:
            return table, pk
        if key != self._marker:
            log.warning(
                "a key of no replicated table skipped", extra={"key": key.decode(errors="replace")}
            )
        return None

    async def _etcd(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except UNAVAILABLE as exc:
            raise ReplicaUnavailable(
                f"etcd did not {what} (shared state {self._rows.decode()!r}): {exc}"
            ) from exc

    async def _txn(self, token: int, ops: list[Any], what: str) -> Any:
        """The ops in one transaction, only while `leader_key` is the one made at `token`;
        the responses. NotLeader when it is not (nothing written)."""
        txns = self._client.transactions
        fence = [txns.create(self._leader_key) == token]
        ok, responses = await self._etcd(what, self._client.transaction(fence, ops, []))
        if not ok:
            raise NotLeader(
                f"{self._leader_key.decode()!r} is no longer the key made at revision {token}: "
                f"this node is not the leader, and did not {what}"
            )
        return responses

    # --- the leader -------------------------------------------------------------------
    async def publish(self, token: int) -> int:
        """Every journal entry into etcd, in journal order, fenced by `token`; each batch is
        forgotten once its transaction succeeded (a failure keeps it for the next try; one
        that timed out may have been written: writing the rows again is harmless). Returns
        how many entries were published. A change is acknowledged once this returned.
        NotLeader, ReplicaUnavailable."""
        async with self._lock:
            published = 0
            while True:
                entries = await asyncio.to_thread(self._db.journal, MAX_TXN_OPS)
                if not entries:
                    return published
                ops, upto, taken = self._batch(entries)
                await self._txn(token, ops, f"publish {len(ops)} rows")
                await asyncio.to_thread(self._db.forget_journal, upto)
                published += taken

    def _batch(self, entries: list[JournalEntry]) -> tuple[list[Any], int, int]:
        """One transaction's ops from the oldest entries: (ops, last seq taken, entries taken).
        A row changed twice is written once (etcd refuses a key twice in a transaction; both
        entries read the row as it is now)."""
        txns = self._client.transactions
        ops: dict[bytes, Any] = {}
        size, upto, taken = 0, 0, 0
        for seq, table, pk, row in entries:
            key = self.key_of(table, pk)
            if key not in ops:
                op = txns.put(key, encode_row(row)) if row is not None else txns.delete(key)
                if ops and (len(ops) == MAX_TXN_OPS or size + _size(op) > MAX_TXN_BYTES):
                    break
                ops[key] = op
                size += _size(op)
            upto, taken = seq, taken + 1
        return list(ops.values()), upto, taken

    async def _seed(self, token: int) -> int:
        """The file's rows as the shared state (none yet): anything a seed cut short left is
        deleted first, the marker is written last (with the last rows). Returns etcd's revision
        after it."""
        rows, upto = await asyncio.to_thread(self._db.replicated_rows)
        txns = self._client.transactions
        # A transaction may not put a key it deletes: what a seed cut short left goes first.
        clear = txns.delete(self._rows, prefix_range_end(self._rows))
        await self._txn(token, [clear], "clear the shared state before seeding it")
        ops = [
            txns.put(self.key_of(table, str(row[REPLICATED[table]])), encode_row(row))
            for table, table_rows in rows.items()
            for row in table_rows
        ]
        ops.append(txns.put(self._marker, str(time.time()).encode()))
        count = sum(len(r) for r in rows.values())
        responses: list[Any] = []
        for batch in _batches(ops):
            responses = await self._txn(token, batch, f"seed the shared state ({count} rows)")
        await asyncio.to_thread(self._db.forget_journal, upto)  # those changes are in the rows
        revision = responses[-1].response_put.header.revision
        log.info("shared state seeded from this file", extra={"rows": count, "revision": revision})
        return revision

    # --- every node -------------------------------------------------------------------
    async def load(self, token: int | None = None) -> int:
        """The whole shared state (one read, of one revision) into the file, its replicated
        tables replaced; returns that revision. Not seeded yet: a node about to lead (its
        `token` given) seeds it from its file; a standby (no token) keeps its file as it is
        (it loads again when the marker appears). ReplicaUnavailable, NotLeader (a seed)."""
        async with self._lock:
            got = await self._etcd(
                "read the shared state", self._client.get_prefix(self._rows, sort_target="key")
            )
            rows: dict[str, list[dict[str, Any]]] = {table: [] for table in REPLICATED}
            seeded = False
            for kv in got:
                parsed = self._parse(kv.key)
                if parsed is not None:
                    rows[parsed[0]].append(decode_row(kv.value))
                seeded = seeded or kv.key == self._marker
            revision = got.header.revision
            if seeded:
                await asyncio.to_thread(self._db.replace_replicated, rows)
                counts = {table: len(r) for table, r in rows.items()}
                log.info("shared state loaded", extra={"revision": revision, "rows": counts})
                return revision
            if token is None:
                log.info("shared state not seeded yet: the file stays as it is")
                return revision
            return await self._seed(token)

    async def follow(self, stop: asyncio.Event, on_applied: Callable[[], None]) -> None:
        """A standby's task: load the shared state, then apply each change etcd reports, and
        call `on_applied` after each batch applied (the state in memory is reloaded there).
        A failure (etcd lost, the watch compacted away) is logged and the state loaded again,
        with backoff. Returns once `stop` is set; cancelling it stops it at once."""
        backoff = BACKOFF_INITIAL_S
        while not stop.is_set():
            try:
                revision = await self.load()
                on_applied()
                backoff = BACKOFF_INITIAL_S
                await self._watch(revision + 1, stop, on_applied)
            except Exception as exc:
                log.warning(
                    "following the shared state failed; loading it again",
                    extra={"error": repr(exc), "retry_s": backoff},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _watch(
        self, revision: int, stop: asyncio.Event, on_applied: Callable[[], None]
    ) -> None:
        """Apply changes from `revision` on until `stop` is set (returns) or the marker
        changes (returns: the caller loads it all again); raises on a watch failure."""
        watch = await self._etcd(
            "watch the shared state",
            self._client.watch_prefix(self._rows, start_revision=revision),
        )
        arrived: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()

        async def pump() -> None:
            # The events of one etcd response arrive together: the consumer below takes all
            # that wait at once, so a leader's transaction is applied whole.
            try:
                async for event in watch:
                    arrived.put_nowait(event)
                arrived.put_nowait(ReplicaUnavailable("etcd ended the watch"))
            except Exception as exc:
                arrived.put_nowait(exc)

        async def stopper() -> None:
            await stop.wait()
            arrived.put_nowait(None)

        helpers = [asyncio.create_task(pump()), asyncio.create_task(stopper())]
        try:
            while True:
                items = [await arrived.get()]
                while not arrived.empty():
                    items.append(arrived.get_nowait())
                changes: list[Change] = []
                for item in items:
                    if item is None:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    if item.kv.key == self._marker:
                        log.info("shared state seeded or reset: loading it whole")
                        return
                    parsed = self._parse(item.kv.key)
                    if parsed is not None:
                        gone = item.kind == EventKind.DELETE
                        changes.append((*parsed, None if gone else decode_row(item.kv.value)))
                if changes:
                    await asyncio.to_thread(self._db.apply_replicated, changes)
                    on_applied()
        finally:
            for task in helpers:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch.cancel(), WATCH_CANCEL_S)
