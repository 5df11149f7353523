"""The API's contract without a plant, the SQLite store, and the structured log format."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.cli_common import CLI
from controller.config import SiteConfig
from controller.logs import LogfmtFormatter
from controller.service import Controller
from controller.store import Store


@pytest.fixture
async def client(site: SiteConfig, tmp_path: Path):
    controller = Controller(site)  # as `gridpilot run` builds it, never started: no tick
    _, key = controller.db.create_key("reader", "viewer", CLI)
    transport = httpx.ASGITransport(app=controller.app)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gridpilot", headers=headers
    ) as c:
        yield c
    controller.close()


async def test_not_ready_before_the_first_tick_as_a_problem_document(client: httpx.AsyncClient):
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == 503 and body["detail"] == "no tick yet"


async def test_alive_and_state_before_the_first_tick(client: httpx.AsyncClient):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/v1/state")).json() == {
        "site": "demo",  # the site file's name
        "tick": None,
        "mode": "starting",
        "devices": {},
    }


async def test_unknown_path_is_a_problem_document(client: httpx.AsyncClient):
    r = await client.get("/v1/nope")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "GET /v1/nope"


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient):
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert "gridpilot_loop_duration_seconds" in names


def test_store_keeps_events_and_samples_and_drains_on_close(tmp_path: Path):
    path = tmp_path / "sub" / "gridpilot.sqlite"
    store = Store(path)
    store.event("controller_started", site="x")
    for i in range(500):
        store.sample(
            {"time_s": 1000.0 + i, "mode": "auto", "it_w": 5e6 + i, "soc_ratio": {"ups-a": 0.5}}
        )
    store.event("device_disconnected", "ups-a", error="timeout")
    store.close()  # everything queued is written before close returns
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*), MAX(it_w) FROM samples").fetchone() == (
            500,
            5e6 + 499,
        )
        rows = conn.execute("SELECT kind, device, detail FROM events ORDER BY id").fetchall()
    assert rows == [
        ("controller_started", None, '{"site": "x"}'),
        ("device_disconnected", "ups-a", '{"error": "timeout"}'),
    ]


def test_a_batch_of_reads_sees_what_is_written_and_cannot_write(tmp_path: Path):
    store = Store(tmp_path / "gridpilot.sqlite")
    try:
        for i in range(3):
            store.sample({"time_s": 1000.0 + i, "mode": "auto", "it_w": 5e6 + i})
        store.writer.flush()
        with store.reading() as query:
            assert query("SELECT COUNT(*) FROM samples", ()) == [(3,)]
            assert query("SELECT MAX(it_w) FROM samples WHERE time_s < ?", (1001.5,)) == [
                (5e6 + 1,)
            ]
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                query("DELETE FROM samples", ())
        assert store.query("SELECT COUNT(*) FROM samples") == [(3,)]
    finally:
        store.close()


def test_store_refuses_an_unwritable_place_at_start(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        Store(blocker / "gridpilot.sqlite")


def test_logfmt_lines_carry_fields_and_quote_what_needs_it():
    record = logging.LogRecord(
        "gridpilot.x", logging.WARNING, __file__, 1, "device error", None, None
    )
    record.device = "ups-a"
    record.error = 'TimeoutError: no answer in "0.5 s"'
    record.grid_w = 5123456.7
    record.soc = 0.61234567
    line = LogfmtFormatter().format(record)
    assert 'level=warning logger=gridpilot.x msg="device error"' in line
    assert "device=ups-a" in line
    assert 'error="TimeoutError: no answer in \\"0.5 s\\""' in line
    assert "grid_w=5123457" in line and "soc=0.612346" in line


def test_retention_deletes_rows_past_their_time_and_keeps_the_rest(site: SiteConfig):
    """Samples and events past `retention.samples_days`, audit entries, cleared alarms and
    ended events past `retention.audit_days`: deleted; recent and active ones: kept."""
    controller = Controller(site)
    now = time.time()
    old, recent = now - 400 * 86400, now - 3600
    db, store = controller.db, controller.store
    for t in (old, recent):
        store.sample({"time_s": t, "mode": "auto", "soc_ratio": {}})
        db._write(
            "INSERT INTO audit (time_s, key_name, action, old, new)"
            " VALUES (?, 'x', 't', 'null', 'null')",
            (t,),
        )
        db.store_alarm({"id": int(t), "key": "k", "severity": "warning", "message": "m",
                        "raised_at": t, "cleared_at": t})  # fmt: skip
    db.store_alarm({"id": 1, "key": "active", "severity": "warning", "message": "m",
                    "raised_at": old})  # fmt: skip  # still active: kept however old
    # Demand-response events: (start, end, cancelled at, started at, ended at).
    events = {
        "old, ended": (old, old + 60, None, old, old + 60),
        "old, cancelled before it began": (old + 60, old + 120, old, None, None),
        "old, over while the controller was down": (old, old + 60, None, None, None),
        "recent, ended": (recent, recent + 60, None, recent, recent + 60),
        "planned, made long ago": (now + 60, now + 120, None, None, None),
    }
    for name, (start, end, cancelled, started, ended) in events.items():
        db._write(
            "INSERT INTO dr_events (kind, value_w, start_s, end_s, created_by, created_at,"
            " cancelled_at, started_at, ended_at) VALUES ('shed', 1e6, ?, ?, ?, ?, ?, ?, ?)",
            (start, end, name, old, cancelled, started, ended),
        )
    # Workload notices: (pending until, cancelled at), kept retention.notices_days (30).
    notices = {
        "over 40 days ago": (now - 40 * 86400, None),
        "cancelled 40 days ago": (now + 60, now - 40 * 86400),
        "over an hour ago": (recent, None),
        "pending, made long ago": (now + 60, None),
    }
    for name, (ends, cancelled) in notices.items():
        db._write(
            "INSERT INTO notices (kind, at_s, ends_s, created_by, created_at, cancelled_at)"
            " VALUES ('job_start', ?, ?, ?, ?, ?)",
            (ends - 5, ends, name, old, cancelled),
        )
    controller.prune(now)
    assert store.writer.flush() and controller.ops_writer.flush()
    kept = {n["created_by"] for n in db.page("notices", 10, None)}
    assert kept == {"over an hour ago", "pending, made long ago"}
    samples = [t for (t,) in store.query("SELECT time_s FROM samples")]
    assert samples == [recent]
    assert [r["time_s"] for r in db.audit_page(10, None)] == [recent]
    assert sorted(a["id"] for a in db.alarms()) == sorted([1, int(recent)])
    kept = {e["created_by"] for e in db.events_page(10, None)}
    assert kept == {"recent, ended", "planned, made long ago"}
    controller.close()
