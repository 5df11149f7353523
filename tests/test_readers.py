"""The whole site (every simulator, OPC UA included) under the controller as `gridpilot run`
builds it, driven through its API and read through /metrics: what the readers of the tick's
record show. Regression tests for defects the readers had when each rebuilt its own view."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from controller.config import SiteConfig
from tests.plant import site_running, until


async def test_reused_heat_is_counted_and_erf_follows(site: SiteConfig):
    """With heat reuse on, the recovered heat the metrics count matches the simulator's own
    integration of the heat it delivered within 0.5 %, and ERF is that heat over the
    facility's energy (it used to stay 0 while 2 MW were delivered)."""
    async with site_running(site) as run:
        r = await run.api.patch(
            "/v1/setpoints",
            json={"heat_reuse_mode": "on", "heat_reuse_request_w": 2e6,
                  "heat_reuse_min_temperature_c": 45.0},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        cdu = run.stack.cdu["cdu-1"]
        await until(lambda: cdu.reused_w > 1.9e6, 30, "the consumer served")
        await asyncio.sleep(2.0)  # the controller's readings catch up (0.5 s polls)
        metrics = run.controller.metrics
        sim_0, counted_0 = cdu.reused_j, metrics.energy_view.reused_heat_j
        await asyncio.sleep(30.0)
        sim_1, counted_1 = cdu.reused_j, metrics.energy_view.reused_heat_j
        delivered = sim_1 - sim_0
        assert delivered > 50e6  # ~2 MW for 30 s
        assert counted_1 - counted_0 == pytest.approx(delivered, rel=0.005)
        await run.scrape()
        assert run.metric("gridpilot_recovered_heat_energy_joules_total") == pytest.approx(
            metrics.energy_view.reused_heat_j, rel=0.01
        )
        erf = run.metric("gridpilot_erf_ratio", window="1m")
        assert erf is not None and erf > 0.05  # 2 MW of ~12 MW
        e = metrics.energy_view
        assert erf == pytest.approx(e.reused_heat_j / e.facility_j, rel=0.5)


async def test_metrics_judge_against_the_limits_in_force(site: SiteConfig):
    """The import cap and ramp headroom series follow an operator's PATCH and a
    demand-response event, not the site file."""
    async with site_running(site) as run:
        await run.scrape()
        assert run.metric("gridpilot_import_cap_watts") is None  # the site file sets none
        r = await run.api.patch("/v1/setpoints", json={"ramp_up_w_per_s": 2e5,
                                                        "ramp_down_w_per_s": 2e5})  # fmt: skip
        assert r.status_code == 200, r.text
        now = time.time()
        r = await run.api.post(
            "/v1/events",
            json={"kind": "import_cap", "value_w": 9.5e6, "start_s": now, "end_s": now + 600},
        )
        assert r.status_code == 201, r.text
        await until(lambda: run.records[-1].in_force.dispatch.import_cap_w == 9.5e6, 5, "cap")
        await asyncio.sleep(1.5)  # the ramp is measured over 1 s
        await run.scrape()
        assert run.metric("gridpilot_import_cap_watts") == 9.5e6
        ramp = run.metric("gridpilot_grid_ramp_watts_per_second")
        headroom = run.metric("gridpilot_grid_ramp_headroom_watts_per_second")
        assert ramp is not None and headroom is not None
        assert headroom + abs(ramp) == pytest.approx(2e5)  # the limit in force, not 5e5
        state = (await run.api.get("/v1/state")).json()
        assert state["in_force"]["import_cap_w"] == 9.5e6
        assert state["in_force"]["ramp_up_w_per_s"] == 2e5


async def test_cooling_starts_without_a_fallback(site: SiteConfig):
    """At start the CDU's data arrive a few seconds after the first tick: no fallback, no
    alarm; the CDU runs on its own setpoint until then (nothing sent)."""
    async with site_running(site) as run:
        await until(lambda: run.records[-1].cooling.get("cdu-1") is not None, 20, "cooling")
        await asyncio.sleep(2.0)
        first = run.records[0].cooling.get("cdu-1")
        assert first is None  # the first tick had no CDU data yet: waiting, not failing
        assert not any(c is not None and c.fallback for r in run.records
                       for c in r.cooling.values())  # fmt: skip
        assert not [a for a in run.controller.alarms.active if a.key.startswith("cooling")]


async def test_a_change_the_locked_disk_refuses_answers_503_and_changes_nothing(
    site: SiteConfig,
):
    """Another process holds the file's write lock past the busy timeout: a PATCH answers a
    problem document (503) and nothing changes, in force or stored; reads of the state are
    answered meanwhile (a change waiting on the disk holds up no read)."""
    async with site_running(site) as run:
        before = (await run.api.get("/v1/setpoints")).json()
        audit = run.controller.db.audit_page(100, None)
        other = sqlite3.connect(site.data_dir / "gridpilot.sqlite", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            change = asyncio.create_task(
                run.api.patch("/v1/setpoints", json={"ramp_up_w_per_s": 123456.0}, timeout=20)
            )
            reads, started = 0, time.monotonic()
            while not change.done():
                state = await run.api.get("/v1/state")  # answered while the change waits
                assert state.status_code == 200
                reads += 1
                await asyncio.sleep(0.2)
            r = await change
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "nothing was changed" in r.json()["detail"]
        assert reads >= (time.monotonic() - started) / 0.2 * 0.5  # reads kept coming
        assert (await run.api.get("/v1/setpoints")).json() == before
        rec = run.records[-1]
        assert rec.in_force.dispatch.ramp_up_w_per_s == before["ramp_up_w_per_s"]
        assert run.controller.db.audit_page(100, None) == audit


async def test_a_locked_disk_never_delays_a_tick_nor_hides_an_alarm(site: SiteConfig):
    """Another process holds the SQLite file's write lock for seconds: ticks go on at their
    period, an alarm raised meanwhile is shown at once (from memory), its raise and clear are
    stored once the lock is gone; nothing is lost."""
    async with site_running(site) as run:
        db_path = site.data_dir / "gridpilot.sqlite"
        other = sqlite3.connect(db_path, isolation_level=None, timeout=5)
        other.execute("BEGIN EXCLUSIVE")  # a backup tool, say, holding the write lock
        mark = len(run.records)
        store = run.controller.store.writer  # a sample a second: it meets the lock first
        await until(lambda: store.failing, 10, "the store to find the file locked")
        ready = await run.api.get("/readyz")
        assert ready.status_code == 503 and "storage failing" in ready.json()["detail"]
        await until(
            lambda: any(a.key == "storage_failing:store" for a in run.controller.alarms.active),
            5,
            "the storage alarm",
        )
        await run.stack.stop_device("ups-b")  # an alarm while the disk is locked
        await until(
            lambda: any(a.key == "device_down:ups-b" for a in run.controller.alarms.active),
            10,
            "the alarm, in memory",
        )
        r = await run.api.get("/v1/alarms", params={"active": "true"})
        (down,) = [a for a in r.json()["alarms"] if a["key"] == "device_down:ups-b"]
        acked = await run.api.post(f"/v1/alarms/{down['id']}/ack")  # in memory at once
        assert acked.status_code == 200 and acked.json()["acked_by"].startswith("test-operator")
        writer = run.controller.ops_writer
        await until(lambda: writer.failing, 15, "the writer to find the file locked")
        await run.stack.start_device("ups-b")
        await until(
            lambda: not any(a.key == "device_down:ups-b" for a in run.controller.alarms.active),
            20,
            "the alarm cleared, in memory",
        )
        other.execute("ROLLBACK")
        other.close()
        assert await asyncio.to_thread(writer.flush, 30.0)
        ticks = run.records[mark:]
        period = site.loop_period_s
        assert all(t.duration_s < period / 2 for t in ticks), max(t.duration_s for t in ticks)
        assert all(t.lateness_s < period / 2 for t in ticks), max(t.lateness_s for t in ticks)
        stored = [a for a in run.controller.db.alarms() if a["key"] == "device_down:ups-b"]
        assert stored and stored[0]["cleared_at"] is not None  # raised and cleared: both kept
        assert stored[0]["acked_at"] == acked.json()["acked_at"]  # and acknowledged,
        audit = run.controller.db.audit_page(100, None)
        acks = [e for e in audit if e["action"] == "alarm.ack" and e["new"]["id"] == down["id"]]
        assert len(acks) == 1  # audited once
        assert writer.failures_total > 0 and not writer.failing
        await until(lambda: not store.failing, 10, "the store to write again")
        await until(
            lambda: not any(a.key.startswith("storage") for a in run.controller.alarms.active),
            5,
            "the storage alarm to clear",
        )
        assert store.shed_total == 0  # a few seconds of samples: all kept
