"""The operators' state shared through etcd: what the leader acknowledged is in etcd, fenced
by its leader key; a standby follows it, and loads it whole before it leads. Real etcd (three
members), real SQLite files."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aetcd
import pytest

from controller.ha.replica import MAX_TXN_OPS, NotLeader, Replica, ReplicaUnavailable
from controller.opsdb import SYSTEM, Actor, OpsDB
from tests.etcd import EtcdCluster, etcd_cluster

OPERATOR = Actor("k1", "ops", "operator")
_sites = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as c:
        yield c


@pytest.fixture
async def client(cluster: EtcdCluster) -> AsyncIterator[aetcd.Client]:
    host, port = cluster.endpoints[0].split(":")
    async with aetcd.Client(host, int(port), timeout=5) as c:
        yield c


@pytest.fixture
def prefix() -> bytes:
    """A site of its own for each test: the cluster is shared by the module."""
    return f"/gridpilot/site-{next(_sites)}".encode()


def opsdb(tmp_path: Path, name: str) -> OpsDB:
    return OpsDB(tmp_path / name / "gridpilot.sqlite")


async def elect(client: aetcd.Client, prefix: bytes) -> int:
    """The leader key made anew (as an election would): its create revision, the token."""
    key = prefix + b"/leader"
    await client.delete(key)
    await client.put(key, b"node")
    got = await client.get(key)
    assert got is not None
    return got.create_revision


def state(db: OpsDB) -> dict[str, list[dict[str, Any]]]:
    rows, _ = db.replicated_rows()
    return {t: sorted(r, key=lambda row: str(next(iter(row.values())))) for t, r in rows.items()}


def make_changes(db: OpsDB) -> str:
    """One of each change an operator makes; the key made (to verify elsewhere)."""
    _, token = db.create_key("ops", "operator", SYSTEM)
    db.put_setting("mode", "manual")
    db.add_event("cap", 5e5, 100.0, 200.0, OPERATOR)
    notice = {"kind": "start", "at_s": 50.0, "duration_s": 60.0, "power_w": 1e5, "gpus": 8}
    db.add_notice({**notice, "job_id": "j1"}, 130.0, OPERATOR)
    db.audit(OPERATOR, "mode.set", "auto", "manual")
    return token


def test_journal_holds_the_replicated_changes_only(tmp_path: Path) -> None:
    db = opsdb(tmp_path, "a")
    db.put_setting("mode", "auto")
    assert db.journal_size() == 0  # HA off (a single node): nothing journalled
    db.set_journalling(True)
    admin = db.create_key("admin", "admin", SYSTEM)[0]
    key_id = db.create_key("ops", "operator", SYSTEM)[0]
    db.put_setting("mode", "manual")
    event = db.add_event("cap", 5e5, 100.0, 200.0, OPERATOR)
    notice = {"kind": "start", "at_s": 50.0, "duration_s": None, "power_w": None, "gpus": None}
    db.add_notice({**notice, "job_id": None}, 130.0, OPERATOR)
    db.revoke_key(key_id, SYSTEM)
    db.store_alarm({"id": 1, "key": "k", "severity": "warn", "message": "m", "raised_at": 1.0})
    db.clear_alarm(1, 2.0)
    db.prune(before_s=time.time() + 10)  # every audit entry and the notice and event go
    entries = db.journal(1000)
    assert [seq for seq, *_ in entries] == sorted(seq for seq, *_ in entries)
    touched = {(table, pk) for _, table, pk, _ in entries}
    assert {("api_keys", admin), ("api_keys", key_id), ("settings", "mode")} <= touched
    assert {("dr_events", str(event["id"])), ("notices", "1"), ("audit", "1")} <= touched
    assert {table for table, _ in touched} == {
        "api_keys",
        "settings",
        "dr_events",
        "notices",
        "audit",
    }
    revoked = next(row for _, t, pk, row in entries if (t, pk) == ("api_keys", key_id))
    assert revoked is not None and revoked["revoked_at"] is not None  # the row as it is now
    assert all(row is None for _, t, _, row in entries if t == "audit")  # pruned: gone
    # Rows that came from the shared state are not journalled again.
    db.forget_journal(entries[-1][0])
    assert db.journal_size() == 0
    db.apply_replicated(
        [("settings", "limit", {"key": "limit", "value": "1"}), ("audit", "9", None)]
    )
    assert db.journal_size() == 0 and db.get_setting("limit") == 1
    db.set_journalling(False)  # and off again: emptied, nothing more
    db.put_setting("mode", "auto")
    assert db.journal_size() == 0


async def seeded_pair(
    tmp_path: Path, client: aetcd.Client, prefix: bytes
) -> tuple[OpsDB, OpsDB, Replica, int]:
    """Two nodes' files; a leads (elected, and its empty file seeded etcd): a, b, a's replica,
    its token."""
    a, b = opsdb(tmp_path, "a"), opsdb(tmp_path, "b")
    leader = Replica(a, client, prefix, prefix + b"/leader")
    token = await elect(client, prefix)
    await leader.load(token)  # seeds: an empty file
    return a, b, leader, token


async def test_published_state_loads_on_another_file(
    tmp_path: Path, client: aetcd.Client, prefix: bytes
) -> None:
    a, b, leader, token = await seeded_pair(tmp_path, client, prefix)
    key = make_changes(a)
    assert await leader.publish(token) == 6  # the key and its audit entry, and four more
    assert a.journal_size() == 0
    assert await leader.publish(token) == 0

    revision = await Replica(b, client, prefix, prefix + b"/leader").load()
    assert revision > token
    assert state(b) == state(a)
    assert b.verify(key) == a.verify(key) is not None  # salt and hash survived the trip
    assert b.get_setting("mode") == "manual"
    assert b.journal_size() == 0


async def test_a_stale_token_writes_nothing(
    tmp_path: Path, client: aetcd.Client, prefix: bytes
) -> None:
    db = opsdb(tmp_path, "a")
    replica = Replica(db, client, prefix, prefix + b"/leader")
    token = await elect(client, prefix)
    await replica.load(token)
    before = await client.get_prefix(prefix + b"/db/")
    await elect(client, prefix)  # another node leads now
    db.put_setting("mode", "manual")
    with pytest.raises(NotLeader, match="not the leader"):
        await replica.publish(token)
    after = await client.get_prefix(prefix + b"/db/")
    assert [(kv.key, kv.mod_revision) for kv in after] == [
        (kv.key, kv.mod_revision) for kv in before
    ]
    assert db.journal_size() == 1  # kept: nothing was published


async def test_etcd_unreachable_is_reported(tmp_path: Path, prefix: bytes) -> None:
    db = opsdb(tmp_path, "a")
    async with aetcd.Client("127.0.0.1", 1, timeout=2) as nowhere:
        replica = Replica(db, nowhere, prefix, prefix + b"/leader")
        db.put_setting("mode", "manual")
        with pytest.raises(ReplicaUnavailable, match="did not publish 1 rows"):
            await replica.publish(1)
    assert db.journal_size() == 1


async def test_a_standby_follows_within_a_second(
    tmp_path: Path, client: aetcd.Client, prefix: bytes
) -> None:
    a, b, leader, token = await seeded_pair(tmp_path, client, prefix)
    applied = asyncio.Event()
    stop = asyncio.Event()
    follower = asyncio.create_task(
        Replica(b, client, prefix, prefix + b"/leader").follow(stop, applied.set)
    )
    try:
        await asyncio.wait_for(applied.wait(), 5)  # its first load
        latencies = []
        for value in ("manual", "auto", "safe"):
            applied.clear()
            start = time.perf_counter()
            a.put_setting("mode", value)
            await leader.publish(token)
            published = time.perf_counter()
            await asyncio.wait_for(applied.wait(), 1.0)
            latencies.append((published - start, time.perf_counter() - start))
            assert b.get_setting("mode") == value
        event = a.add_event("cap", 1e5, 1.0, 2.0, OPERATOR)
        for gone in (False, True):  # stored, then pruned: a delete follows too
            applied.clear()
            await leader.publish(token)
            await asyncio.wait_for(applied.wait(), 1.0)
            assert (b.event(event["id"]) is None) is gone
            a.prune(before_s=time.time() + 10)
        print(f"publish, applied on the standby (s): {latencies}")
    finally:
        stop.set()
        await asyncio.wait_for(follower, 2.0)
    follower = asyncio.create_task(
        Replica(b, client, prefix, prefix + b"/leader").follow(asyncio.Event(), lambda: None)
    )
    await asyncio.sleep(0.3)
    follower.cancel()  # the standby becomes the leader: it stops following at once
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(follower, 1.0)


async def test_an_acknowledged_change_survives_the_leaders_crash(
    tmp_path: Path, client: aetcd.Client, prefix: bytes
) -> None:
    a, b, leader, token = await seeded_pair(tmp_path, client, prefix)
    key = a.create_key("night-shift", "operator", SYSTEM)[1]
    await leader.publish(token)  # acknowledged
    a.put_setting("mode", "manual")  # never published: the crash comes first
    del leader, a  # the leader's process is gone (its file with it: another machine)

    successor = Replica(b, client, prefix, prefix + b"/leader")
    await successor.load(await elect(client, prefix))  # its key now: it leads
    actor = b.verify(key)
    assert actor is not None and actor.name == "night-shift"
    assert b.get_setting("mode") is None


async def test_the_first_leader_seeds_and_then_etcd_is_the_truth(
    tmp_path: Path, client: aetcd.Client, prefix: bytes
) -> None:
    a, b = opsdb(tmp_path, "a"), opsdb(tmp_path, "b")
    key = make_changes(a)  # before HA: not journalled, the file is the state
    b.put_setting("mode", "standby's own")
    b.create_key("stray", "admin", SYSTEM)
    standby = Replica(b, client, prefix, prefix + b"/leader")
    await standby.load()  # nothing seeded yet: a standby keeps its file
    assert b.get_setting("mode") == "standby's own"

    token = await elect(client, prefix)
    await Replica(a, client, prefix, prefix + b"/leader").load(token)  # seeds
    stored = await client.get_prefix(prefix + b"/db/")
    assert len(stored) == sum(len(r) for r in state(a).values()) + 1  # and the marker
    await standby.load()
    assert state(b) == state(a)
    assert b.verify(key) is not None
    assert [k["name"] for k in b.api_keys()] == ["ops"]  # its own rows are gone

    # A later leader with rows of its own loads etcd's: it does not seed again.
    b.put_setting("mode", "stale")
    await Replica(b, client, prefix, prefix + b"/leader").load(await elect(client, prefix))
    assert state(b) == state(a)


async def test_a_thousand_rows_publish_in_batches(
    tmp_path: Path, client: aetcd.Client, prefix: bytes
) -> None:
    a, b, leader, token = await seeded_pair(tmp_path, client, prefix)
    with a.transaction():
        for i in range(1000):
            a.audit(OPERATOR, "setpoint.set", i, i + 1)
    start = time.perf_counter()
    assert await leader.publish(token) == 1000
    publish_s = time.perf_counter() - start
    stored = await client.get_prefix(prefix + b"/db/audit/")
    assert len(stored) == 1000
    revisions = sorted({kv.mod_revision for kv in stored})
    assert len(revisions) == -(-1000 // MAX_TXN_OPS)  # each transaction within etcd's limit

    start = time.perf_counter()
    await Replica(b, client, prefix, prefix + b"/leader").load()
    load_s = time.perf_counter() - start
    assert state(b) == state(a)
    print(f"1000 rows: publish {publish_s:.3f} s, load {load_s:.3f} s")


async def test_a_standby_catches_up_after_its_etcd_member_restarts(
    tmp_path: Path, cluster: EtcdCluster, prefix: bytes
) -> None:
    a, b = opsdb(tmp_path, "a"), opsdb(tmp_path, "b")
    lost = cluster.members[0]  # the standby's member: its watch breaks
    host, port = cluster.members[1].endpoint.split(":")
    async with aetcd.Client(host, int(port), timeout=5) as leaders:
        leader = Replica(a, leaders, prefix, prefix + b"/leader")
        token = await elect(leaders, prefix)
        await leader.load(token)
        host, port = lost.endpoint.split(":")
        async with aetcd.Client(host, int(port), timeout=5) as standbys:
            applied, stop = asyncio.Event(), asyncio.Event()
            standby = Replica(b, standbys, prefix, prefix + b"/leader")
            follower = asyncio.create_task(standby.follow(stop, applied.set))
            try:
                await asyncio.wait_for(applied.wait(), 5)
                cluster.kill(lost)
                a.put_setting("mode", "manual")
                # Two members of three are a quorum; if the lost one led etcd, a publish in
                # flight may time out before another is elected: the leader tries again.
                for _ in range(3):
                    try:
                        assert await leader.publish(token) == 1
                        break
                    except ReplicaUnavailable:
                        await asyncio.sleep(0.5)
                assert a.journal_size() == 0
                cluster.restart(lost)
                await asyncio.to_thread(cluster.wait_healthy, [lost])
                deadline = time.monotonic() + 15
                while b.get_setting("mode") != "manual":
                    assert time.monotonic() < deadline, "the standby never caught up"
                    await asyncio.sleep(0.1)
            finally:
                stop.set()
                await asyncio.wait_for(follower, 2.0)
