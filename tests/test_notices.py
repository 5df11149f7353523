"""Workload notices: who may post and cancel them (a workload key may do that and nothing
else), what is refused (and then stored nowhere), the audit log, the bound, a restart, and
what the state, the metrics and `gridpilot notify` show on the running site."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from typing import Any

import httpx
from fastapi.routing import APIRoute
from typer.testing import CliRunner

from controller.cli import app
from controller.cli_common import CLI
from controller.config import SiteConfig
from controller.opsdb import ROLES
from controller.service import Controller
from controller.sitefile import parse_site
from tests.plant import modbus_only, site_running, until
from tests.processes import GRIDPILOT
from tests.test_operate_api import audited, auth, refused_with, rows_read

# What a workload key may call; every other route answers it 403.
WORKLOAD_ROUTES = {("POST", "/v1/notices"), ("DELETE", "/v1/notices/{notice_id}")}


@contextlib.asynccontextmanager
async def site_api(site: SiteConfig):
    """The API of a controller as `gridpilot run` builds it, never started (no tick), with a
    key of each role: (client, keys, controller)."""
    controller = Controller(site)
    keys = {role: controller.db.create_key(f"{role}-key", role, CLI)[1] for role in ROLES}
    transport = httpx.ASGITransport(app=controller.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gridpilot") as client:
        yield client, keys, controller
    controller.close()


def notice(kind: str = "job_start", in_s: float = 60.0, **more: Any) -> dict[str, Any]:
    return {"kind": kind, "at_s": time.time() + in_s, **more}


async def test_a_workload_key_may_post_and_cancel_notices_and_nothing_else(site: SiteConfig):
    """Every /v1 operation the app serves, asked with a workload key: 403, but for posting
    and cancelling notices. Admins can make such keys."""
    async with site_api(site) as (client, keys, controller):
        head, paths = auth(keys["workload"]), controller.app.openapi()["paths"]
        served = {(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1") for m in ops}
        assert len(served) > 25 and served > WORKLOAD_ROUTES
        for method, path in sorted(served):
            url = re.sub(r"\{[^}]+\}", "1", path)
            r = await client.request(method, url, headers=head)
            if (method, path) in WORKLOAD_ROUTES:
                assert r.status_code in (404, 422), (method, url, r.text)  # let in
            else:
                assert r.status_code == 403, (method, url, r.text)
                assert "the key is workload" in r.json()["title"]
        # No /v1 route of the app's own hides from the schema (the walk would miss it).
        hidden = [r.path for r in controller.app.routes if isinstance(r, APIRoute)
                  and r.path.startswith("/v1") and not r.include_in_schema]  # fmt: skip
        assert hidden == []
        made = await client.post(
            "/v1/keys", json={"name": "slurm", "role": "workload"}, headers=auth(keys["admin"])
        )
        assert made.status_code == 201 and made.json()["role"] == "workload"
        posted = await client.post("/v1/notices", json=notice(), headers=auth(made.json()["key"]))
        assert posted.status_code == 201, posted.text
        gone = await client.delete(f"/v1/notices/{posted.json()['id']}", headers=head)
        refused_with(gone, 403, "posted by another key", "nothing was changed")


async def test_who_posts_reads_and_cancels_notices_and_the_audit_log_says_so(site: SiteConfig):
    async with site_api(site) as (client, keys, controller):
        ops = controller.operations
        refused_with(await client.post("/v1/notices", json=notice(), headers=auth(keys["viewer"])),
                     403, "POST /v1/notices")  # fmt: skip
        by_operator = await client.post(
            "/v1/notices", json=notice("level_change", 30, power_w=4.2e6),
            headers=auth(keys["operator"]),
        )  # fmt: skip
        by_workload = await client.post(
            "/v1/notices", json=notice("pause_start", 20, duration_s=8, gpus=512, job_id="7_3"),
            headers=auth(keys["workload"]),
        )  # fmt: skip
        assert by_operator.status_code == by_workload.status_code == 201
        ours, theirs = by_workload.json(), by_operator.json()
        assert (ours["gpus"], ours["power_w"], ours["job_id"]) == (512, None, "7_3")  # as given
        assert ours["ends_s"] == ours["at_s"] + 8 + site.notices.late_s
        # The tick sees them in order of their time, the GPUs as W (700 W each by default).
        first, second = ops.in_force(time.time()).notices
        assert (first.id, first.power_w, second.id) == (ours["id"], 512 * 700.0, theirs["id"])

        seen = (await client.get("/v1/notices", headers=auth(keys["viewer"]))).json()["notices"]
        assert [n["created_by"] for n in seen] == ["(a key)", "(a key)"]  # newest first
        seen = (await client.get("/v1/notices", headers=auth(keys["operator"]))).json()
        assert seen["notices"][0]["created_by"].startswith("workload-key (")

        log = audited(controller.db)
        r = await client.delete(f"/v1/notices/{theirs['id']}", headers=auth(keys["workload"]))
        refused_with(r, 403, "a workload key cancels only the notices it posted")
        assert audited(controller.db) == log and len(ops.in_force(time.time()).notices) == 2
        cancelled = await client.delete(f"/v1/notices/{ours['id']}", headers=auth(keys["workload"]))
        assert cancelled.status_code == 200 and cancelled.json()["cancelled_at"] is not None
        r = await client.delete(f"/v1/notices/{ours['id']}", headers=auth(keys["operator"]))
        refused_with(r, 404, f"No notice {ours['id']} to cancel")
        assert [n.id for n in ops.in_force(time.time()).notices] == [theirs["id"]]

        cancel, *made = audited(controller.db)
        assert [e["action"] for e in made] == ["notice.create", "notice.create"]
        assert [e["key_name"] for e in made] == ["workload-key", "operator-key"]
        assert made[0]["old"] is None and made[0]["new"] == ours
        assert cancel["action"] == "notice.cancel" and cancel["key_name"] == "workload-key"
        assert cancel["old"] == ours and cancel["new"] == cancelled.json()


BAD = [  # (what is sent, the field named, words in its message)
    (notice(in_s=-60), "at_s", "s in the past; a notice may take effect at most notices.late_s"),
    (notice(in_s=8 * 86400), "at_s", "at most notices.ahead_s (604800 s)"),
    (notice(power_w=1e6, gpus=8), "gpus", "give power_w or gpus, not both"),
    (notice("job_restart"), "kind", "job_start"),
    (notice(priority="high"), "priority", "Extra inputs"),
    (notice(duration_s=None), "duration_s", "valid number"),  # absent, or a value: not null
    (notice(duration_s=0), "duration_s", "greater than 0"),
    (notice(gpus=8.5), "gpus", "valid integer"),
    (notice(gpus="8"), "gpus", "valid integer"),
    (notice(power_w=-1.0), "power_w", "greater than or equal to 0"),
    (notice(job_id="a b"), "job_id", "pattern"),
    ({"kind": "job_stop"}, "at_s", "Field required"),
]


async def test_bad_notices_are_refused_naming_the_field_and_store_nothing(site: SiteConfig):
    """Each refused with a problem document naming its field; nothing stored, audited or
    pending. A notice up to `notices.late_s` late is taken (clocks and networks lag)."""
    async with site_api(site) as (client, keys, controller):
        head = auth(keys["workload"])
        for body, field, words in BAD:
            r = await client.post("/v1/notices", json=body, headers=head)
            refused_with(r, 422, "nothing was changed")
            assert any(e["field"] == field and words in e["message"]
                       for e in r.json()["errors"]), (body, r.json())  # fmt: skip
        r = await client.post("/v1/notices", content='{"kind": "job_stop", "at_s": NaN}',
                              headers=head | {"content-type": "application/json"})  # fmt: skip
        refused_with(r, 422, "nothing was changed")
        listed = await client.get("/v1/notices", headers=auth(keys["viewer"]))
        assert listed.json() == {"notices": [], "next_before_id": None}
        assert audited(controller.db) == []
        assert controller.operations.in_force(time.time()).notices == ()
        late = await client.post("/v1/notices", json=notice(in_s=-3), headers=head)
        assert late.status_code == 201 and controller.operations.in_force(time.time()).notices


async def test_pending_notices_are_bounded_and_one_past_the_bound_stores_nothing(site_data):
    """At `limits.max_pending_notices` pending, one more is refused (409, naming the bound);
    one that has passed or was cancelled no longer counts."""
    site = parse_site(site_data | {"limits": {"max_pending_notices": 2},
                                   "notices": {"late_s": 0.3}})  # fmt: skip
    async with site_api(site) as (client, keys, controller):
        head = auth(keys["workload"])
        soon = await client.post("/v1/notices", json=notice(in_s=0.1), headers=head)
        later = await client.post("/v1/notices", json=notice(in_s=100), headers=head)
        assert soon.status_code == later.status_code == 201
        listed = (await client.get("/v1/notices", headers=auth(keys["viewer"]))).json()
        log = audited(controller.db)
        r = await client.post("/v1/notices", json=notice(in_s=200), headers=head)
        refused_with(r, 409, "2 notices are pending", "limits.max_pending_notices")
        assert (await client.get("/v1/notices", headers=auth(keys["viewer"]))).json() == listed
        assert audited(controller.db) == log
        await asyncio.sleep(0.5)  # the first has passed (its time and late_s)
        assert (await client.post("/v1/notices", json=notice(in_s=200),
                                  headers=head)).status_code == 201  # fmt: skip
        assert (await client.post("/v1/notices", json=notice(in_s=300),
                                  headers=head)).status_code == 409  # fmt: skip
        r = await client.delete(f"/v1/notices/{soon.json()['id']}", headers=head)
        refused_with(r, 409, f"notice {soon.json()['id']} is over")
        assert (await client.delete(f"/v1/notices/{later.json()['id']}",
                                    headers=head)).status_code == 200  # fmt: skip
        assert (await client.post("/v1/notices", json=notice(in_s=300),
                                  headers=head)).status_code == 201  # fmt: skip


async def test_notices_survive_a_restart_are_read_from_memory_and_pruned(site_data):
    """A controller started again on the same data finds the pending notices (not the
    cancelled or passed ones); each tick reads them from memory (no row read), the same tuple
    until one changes; once over, retention deletes them from the file."""
    site = parse_site(site_data | {"notices": {"late_s": 0.2, "power_w_per_gpu": 1000}})
    async with site_api(site) as (client, keys, controller):
        head = auth(keys["workload"])
        kept = (await client.post("/v1/notices", json=notice("job_start", 60, gpus=8),
                                  headers=head)).json()  # fmt: skip
        dropped = (await client.post("/v1/notices", json=notice(in_s=90), headers=head)).json()
        passing = (await client.post("/v1/notices", json=notice(in_s=0.05), headers=head)).json()
        assert (await client.delete(f"/v1/notices/{dropped['id']}", headers=head)).is_success
    await asyncio.sleep(0.3)  # `passing` is over
    async with site_api(site) as (client, keys, controller):
        ops, db = controller.operations, controller.db
        count = rows_read(db)
        now = time.time()
        first, again = ops.in_force(now).notices, ops.in_force(now + 1).notices
        assert count[0] == 0 and first is again  # memory only; unchanged: the same tuple
        (found,) = first
        assert (found.id, found.kind, found.power_w) == (kept["id"], "job_start", 8 * 1000.0)
        db.prune(0.0, notices_before_s=time.time())  # everything over or cancelled by now
        ids = [n["id"] for n in db.page("notices", 10, None)]
        assert ids == [kept["id"]] and passing["id"] not in ids


def notify(*args: str, fast: bool = False) -> subprocess.CompletedProcess[str]:
    """`gridpilot notify ARGS` as a process (fast: `python -m controller.notify`)."""
    command = [sys.executable, "-m", "controller.notify"] if fast else [*GRIDPILOT, "notify"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


async def test_gridpilot_notify_posts_to_the_running_site_and_state_and_metrics_show_it(
    site_data,
):
    """A workload key made by `gridpilot keys create --role workload`; `gridpilot notify`
    against the API's own process: the notice is pending, /v1/state and /metrics show it as
    the next with its lead; a refusal is the API's problem document and exit 2; once the
    notice is cancelled the lead is gone."""
    site = modbus_only(site_data)
    made = CliRunner().invoke(app, ["keys", "create", "--role", "workload", "--name", "slurm",
                                    "--data-dir", str(site.data_dir)])  # fmt: skip
    assert made.exit_code == 0, made.output
    key = next(line.split()[1] for line in made.stdout.splitlines() if line.startswith("key "))
    async with site_running(site) as run:
        url = f"http://127.0.0.1:{site.api_port}"
        out = await asyncio.to_thread(
            notify, "job_start", "--in", "30", "--gpus", "64", "--job-id", "4242",
            "--url", url, "--key", key,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        stored = json.loads(out.stdout)
        assert (stored["kind"], stored["gpus"], stored["created_by"]) == (
            "job_start", 64, f"slurm ({key.split('_')[1]})",
        )  # fmt: skip

        async def shown() -> dict:
            return (await run.api.get("/v1/state")).json()["notices"]

        await until(lambda: run.records[-1].in_force.notices, 5, "the notice at a tick")
        state = await shown()
        assert state["pending"] == 1 and state["next"]["kind"] == "job_start"
        assert 20 < state["next"]["lead_s"] <= 30 and state["next"]["power_w"] == 64 * 700.0
        await run.scrape()
        assert run.metric("gridpilot_notices_pending", site=site.name) == 1
        assert 20 < run.metric("gridpilot_notice_next_lead_seconds", site=site.name) <= 30

        refused = await asyncio.to_thread(
            notify, "pause_start", "--in", "1e9", "--url", url, "--key", key, fast=True
        )
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        problem = json.loads(refused.stderr)
        assert problem["status"] == 422 and "notices.ahead_s" in problem["errors"][0]["message"]
        forbidden = await run.api.get("/v1/state", headers=auth(key))
        assert forbidden.status_code == 403

        gone = await asyncio.to_thread(
            notify, "cancel", "--id", str(stored["id"]), "--url", url, "--key", key, fast=True
        )
        assert gone.returncode == 0, gone.stderr
        assert json.loads(gone.stdout)["cancelled_at"] is not None
        again = await asyncio.to_thread(
            notify, "cancel", "--id", str(stored["id"]), "--url", url, "--key", key, fast=True
        )
        assert again.returncode == 2 and json.loads(again.stderr)["status"] == 404
        await until(lambda: not run.records[-1].in_force.notices, 5, "no notice at a tick")
        await asyncio.sleep(2 * site.loop_period_s)  # a view of the tick after
        await run.scrape()
        assert run.metric("gridpilot_notice_next_lead_seconds", site=site.name) is None
        assert run.metric("gridpilot_notices_pending", site=site.name) == 0
        assert (await shown()) == {"pending": 0, "next": None}
