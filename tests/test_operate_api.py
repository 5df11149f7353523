"""The operator API: who may do what, what is refused (and then changes nothing), what is
audited, and how setpoints, modes and demand-response events take effect over time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from controller import opsdb
from controller.cli_common import CLI
from controller.config import SiteConfig
from controller.operations import Operations
from controller.opsdb import SYSTEM, OpsDB
from controller.service import Controller
from controller.sitefile import parse_site


@contextlib.asynccontextmanager
async def operate(site: SiteConfig):
    """The API of a controller as `gridpilot run` builds it, never started (no tick), with a
    key of each role: (client, keys, operations, database)."""
    controller = Controller(site)
    db, ops = controller.db, controller.operations
    keys = {
        role: db.create_key(f"{role}-key", role, CLI)[1] for role in ("viewer", "operator", "admin")
    }  # as `gridpilot keys create` makes them
    keys["bad"] = "gp_000000000000_not-a-real-secret"
    transport = httpx.ASGITransport(app=controller.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gridpilot") as client:
        yield client, keys, ops, db
    controller.close()


@pytest.fixture
async def api(site: SiteConfig):
    async with operate(site) as running:
        yield running


def auth(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def audited(db: OpsDB) -> list[dict]:
    """The audit log, newest first, without the fixture's own keys."""
    return [e for e in db.audit_page(100, None) if e["key_name"] != CLI.name]


FUTURE = time.time() + 3600
FULL_SETPOINTS = {
    "ramp_up_w_per_s": 5e5, "ramp_down_w_per_s": 5e5, "soc_target_low_ratio": 0.5,
    "soc_target_high_ratio": 0.7, "soc_min_ratio": 0.2, "ride_through_s": 300,
    "import_cap_w": None, "droop": 0.05, "deadband_hz": 0.015, "supply_temperature_c": 32,
    "heat_reuse_mode": "off", "heat_reuse_request_w": 0, "heat_reuse_min_temperature_c": 45,
    "manual_battery_w": 0,
}  # fmt: skip
# (method, path, body, the least role that may, the answer when allowed). Ids that do not
# exist answer 404 once authorised: the key is checked first.
ENDPOINTS = [
    ("GET", "/v1/state", None, "viewer", 200),
    ("GET", "/v1/devices", None, "viewer", 200),
    ("GET", "/v1/devices/{device_id}", None, "viewer", 404),
    ("GET", "/v1/setpoints", None, "viewer", 200),
    ("PUT", "/v1/setpoints", FULL_SETPOINTS, "operator", 200),
    ("PATCH", "/v1/setpoints", {"ramp_up_w_per_s": 400000}, "operator", 200),
    ("GET", "/v1/mode", None, "viewer", 200),
    ("POST", "/v1/mode", {"mode": "auto"}, "operator", 200),
    ("GET", "/v1/events", None, "viewer", 200),
    ("POST", "/v1/events",
     {"kind": "import_cap", "value_w": 8e6, "start_s": FUTURE, "end_s": FUTURE + 600},
     "operator", 201),
    ("DELETE", "/v1/events/{event_id}", None, "operator", 404),
    ("GET", "/v1/events/{event_id}/performance", None, "viewer", 404),
    ("GET", "/v1/alarms", None, "viewer", 200),
    ("POST", "/v1/alarms/{alarm_id}/ack", None, "operator", 404),
    ("GET", "/v1/audit", None, "viewer", 200),
    ("GET", "/v1/keys", None, "admin", 200),
    ("POST", "/v1/keys", {"name": "night shift", "role": "viewer"}, "admin", 201),
    ("DELETE", "/v1/keys/{key_id}", None, "admin", 404),
    ("GET", "/v1/whoami", None, "viewer", 200),
    ("GET", "/v1/efficiency", None, "viewer", 200),
    ("GET", "/v1/stream", None, "viewer", None),  # endless when allowed: test_stream.py
    ("GET", "/v1/captures", None, "viewer", 200),
    ("GET", "/v1/captures/{capture_id}/{part}", None, "viewer", 404),
    ("POST", "/v1/captures", {"reason": "matrix"}, "operator", 202),
    ("GET", "/v1/report", None, "viewer", 200),
    ("GET", "/v1/history", None, "viewer", 200),
    # Workload keys may post and cancel notices too (off the ladder: test_notices.py).
    ("GET", "/v1/notices", None, "viewer", 200),
    ("POST", "/v1/notices", {"kind": "job_start", "at_s": FUTURE}, "operator", 201),
    ("DELETE", "/v1/notices/{notice_id}", None, "operator", 404),
]  # fmt: skip
ORDER = ["viewer", "operator", "admin"]
MISSING = {"device_id": "ups-z", "event_id": "999", "alarm_id": "999", "key_id": "abc123",
           "capture_id": "20990101T000000.000Z-alarm", "part": "cfg",
           "notice_id": "999"}  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "least", "allowed"), ENDPOINTS)
async def test_authorisation_matrix(api, method: str, path: str, body, least: str, allowed: int):
    client, keys, _, _ = api
    for who in (None, "bad", "viewer", "operator", "admin"):
        url = path.format(**MISSING)
        if allowed is None and who not in (None, "bad"):
            continue
        r = await client.request(method, url, json=body, headers=auth(keys.get(who or "")))
        if who in (None, "bad"):
            expected = 401
        elif ORDER.index(who) < ORDER.index(least):
            expected = 403
        else:
            expected = allowed
        assert r.status_code == expected, (who, r.text)
        if r.status_code >= 400:
            assert r.headers["content-type"] == "application/problem+json"
    # The probes and the metrics need no key.
    for path in ("/healthz", "/metrics"):
        assert (await client.get(path)).status_code == 200
    assert (await client.get("/readyz")).status_code == 503  # no tick yet: not ready, not 401


async def test_setpoint_change_is_applied_persisted_and_audited(api, site: SiteConfig):
    client, keys, ops, db = api
    r = await client.patch(
        "/v1/setpoints", json={"ramp_up_w_per_s": 250000, "import_cap_w": 9e6},
        headers=auth(keys["operator"]),
    )  # fmt: skip
    assert r.status_code == 200 and r.json()["ramp_up_w_per_s"] == 250000
    force = ops.in_force(time.time())
    assert force.dispatch.ramp_up_w_per_s == 250000 and force.dispatch.import_cap_w == 9e6
    assert force.dispatch.lowpass_tau_s == site.dispatch.lowpass_tau_s  # the rest as configured
    (entry,) = audited(db)
    assert entry["action"] == "setpoints.change" and entry["key_name"] == "operator-key"
    assert entry["old"] == {"ramp_up_w_per_s": 500000.0, "import_cap_w": None}
    assert entry["new"] == {"ramp_up_w_per_s": 250000.0, "import_cap_w": 9e6}
    assert Operations(site, db).setpoints.ramp_up_w_per_s == 250000  # as a restart finds it


BAD_BODIES = [
    ('{"ramp_up_w_per_s": -5}', "application/json", 422, "ramp_up_w_per_s"),
    ('{"ramp_up_w_per_s": 2e9}', "application/json", 422, "ramp_up_w_per_s"),
    ('{"ramp_up_w_per_s": NaN}', "application/json", 422, "ramp_up_w_per_s"),
    # Above zero, yet no limit a site has: each lower bound is the least that means something.
    ('{"ramp_up_w_per_s": 5e-324}', "application/json", 422, "ramp_up_w_per_s"),
    ('{"ramp_down_w_per_s": 999}', "application/json", 422, "ramp_down_w_per_s"),
    ('{"droop": 5e-324}', "application/json", 422, "droop"),
    ('{"import_cap_w": 5e-324}', "application/json", 422, "import_cap_w"),
    ('{"import_cap_w": Infinity}', "application/json", 422, "import_cap_w"),
    ('{"colour": "red"}', "application/json", 422, "colour"),
    ('{"soc_target_low_ratio": 0.9}', "application/json", 422, None),  # above the high end
    ('{"soc_target_high_ratio": 0.99}', "application/json", 422, None),  # above the site's max
    ('{"supply_temperature_c": 50}', "application/json", 422, "supply_temperature_c"),  # > W45
    ('{"ramp_up_w_per_s": 1e5', "application/json", 422, None),  # not JSON
    ('{"ramp_up_w_per_s": 1e5}', "text/plain", 415, None),
    ('{"ramp_up_w_per_s": ' + "1" * 70000 + "}", "application/json", 413, None),
]

# The bound each refused value broke (W/s for the ramps, W for the cap, per unit for droop).
NAMED_BOUNDS = {
    '{"ramp_up_w_per_s": -5}': {"ge": 1e3},
    '{"ramp_up_w_per_s": 2e9}': {"le": 1e9},
    '{"ramp_up_w_per_s": 5e-324}': {"ge": 1e3},
    '{"ramp_down_w_per_s": 999}': {"ge": 1e3},
    '{"droop": 5e-324}': {"ge": 0.001},
    '{"import_cap_w": 5e-324}': {"ge": 1e3},
}


async def test_a_setpoint_change_is_validated_as_the_whole_dispatch_config(api):
    """The site file would refuse a SoC band above soc_max_ratio (0.95); so does a PATCH,
    naming both fields; nothing changes and nothing is audited."""
    client, keys, ops, db = api
    before = ops.in_force(time.time())
    r = await client.patch(
        "/v1/setpoints", json={"soc_target_high_ratio": 0.99}, headers=auth(keys["operator"])
    )
    assert r.status_code == 422, r.text
    message = " ".join(e["message"] for e in r.json()["errors"])
    assert "soc_target_high_ratio (0.99)" in message and "soc_max_ratio (0.95)" in message
    assert ops.in_force(time.time()) == before and audited(db) == []


@pytest.mark.parametrize(("body", "content_type", "status", "field"), BAD_BODIES)
async def test_bad_input_is_refused_and_changes_nothing(api, body, content_type, status, field):
    client, keys, ops, db = api
    before = ops.setpoints
    r = await client.patch(
        "/v1/setpoints",
        content=body,
        headers={**auth(keys["operator"]), "content-type": content_type},
    )
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == status and problem["title"]
    if field is not None:
        assert any(e["field"] == field for e in problem["errors"]), problem
    if body in NAMED_BOUNDS:  # the bound broken is named
        (error,) = problem["errors"]
        assert error["bounds"] == NAMED_BOUNDS[body]
    assert ops.setpoints == before
    assert audited(db) == []  # nothing accepted, nothing audited


async def test_override_with_ttl_reverts_and_the_revert_is_audited(api):
    client, keys, ops, db = api
    r = await client.patch(
        "/v1/setpoints", json={"droop": 0.04, "ttl_s": 0.3}, headers=auth(keys["operator"])
    )
    assert r.status_code == 200 and r.json()["override"]["previous"]["droop"] == 0.05
    assert ops.in_force(time.time()).dispatch.droop == 0.04
    assert ops.in_force(time.time() + 1.0).dispatch.droop == 0.05  # expired: back to before
    assert ops.writer.flush()  # the tick handed the revert's record to the writer
    assert ops.setpoints.droop == 0.05 and ops.override is None
    actions = [(e["action"], e["key_name"]) for e in audited(db)]
    assert actions[0] == ("setpoints.revert", "system")
    assert ("setpoints.change", "operator-key") in actions


async def test_events_overlap_to_the_strictest_and_start_and_end_on_time(api):
    client, keys, ops, db = api
    now = time.time()
    head = auth(keys["operator"])
    for value, start, end in ((9e6, 10, 100), (7e6, 50, 80), (8e6, 60, 200)):
        r = await client.post(
            "/v1/events",
            json={"kind": "import_cap", "value_w": value, "start_s": now + start,
                  "end_s": now + end},
            headers=head,
        )  # fmt: skip
        assert r.status_code == 201, r.text
    shed = {"kind": "shed", "value_w": 5e5, "start_s": now + 20, "end_s": now + 30}
    assert (await client.post("/v1/events", json=shed, headers=head)).status_code == 201

    def cap_at(offset: float) -> float | None:
        return ops.in_force(now + offset).dispatch.import_cap_w

    assert cap_at(-20) is None  # far ahead
    # Near its start, a cap falls at the ramp limit (0.5 MW/s) to be reached 2 s before it.
    assert cap_at(5) == pytest.approx(9e6 + 5e5 * (10 - 5 - 2))
    assert cap_at(8) == 9e6
    assert cap_at(15) == 9e6
    assert ops.in_force(now + 25).shed_w == 5e5
    assert cap_at(55) == 7e6  # the strictest of those in force
    assert cap_at(70) == 7e6
    assert cap_at(90) == 8e6
    assert cap_at(150) == 8e6
    assert cap_at(250) is None
    assert ops.writer.flush()  # the ticks handed each edge's record to the writer
    starts = [e for e in audited(db) if e["action"] == "event.start"]
    ends = [e for e in audited(db) if e["action"] == "event.end"]
    assert len(starts) == 4 and len(ends) == 4  # each once, by the system
    # A cancelled event ends at once.
    late = {"kind": "import_cap", "value_w": 6e6, "start_s": now, "end_s": now + 1000}
    event = (await client.post("/v1/events", json=late, headers=head)).json()
    assert ops.in_force(time.time()).dispatch.import_cap_w == 6e6
    assert (await client.delete(f"/v1/events/{event['id']}", headers=head)).status_code == 200
    assert ops.in_force(time.time()).dispatch.import_cap_w is None
    assert (await client.delete(f"/v1/events/{event['id']}", headers=head)).status_code == 404
    bad = {"kind": "import_cap", "value_w": 6e6, "start_s": now + 10, "end_s": now + 5}
    r = await client.post("/v1/events", json=bad, headers=head)
    assert r.status_code == 422 and "end_s must be after start_s" in json.dumps(r.json())


async def test_mode_with_ttl_and_keys_lifecycle(api):
    client, keys, ops, _ = api
    r = await client.post(
        "/v1/mode", json={"mode": "safe", "ttl_s": 0.2}, headers=auth(keys["operator"])
    )
    assert r.status_code == 200 and ops.in_force(time.time()).mode == "safe"
    assert ops.in_force(time.time() + 1).mode == "auto"
    assert ops.writer.flush()  # the revert's audit entry is stored before the keys' below
    assert (
        await client.post("/v1/mode", json={"mode": "off"}, headers=auth(keys["operator"]))
    ).status_code == 422
    made = await client.post(
        "/v1/keys", json={"name": "night shift", "role": "operator"}, headers=auth(keys["admin"])
    )
    new = made.json()
    assert made.status_code == 201 and new["key"].startswith("gp_")
    listed = (await client.get("/v1/keys", headers=auth(keys["admin"]))).json()["keys"]
    assert all("key" not in k and "hash" not in k for k in listed)
    assert (await client.get("/v1/mode", headers=auth(new["key"]))).status_code == 200
    gone = await client.delete(f"/v1/keys/{new['id']}", headers=auth(keys["admin"]))
    assert gone.status_code == 200
    assert (await client.get("/v1/mode", headers=auth(new["key"]))).status_code == 401
    log = (await client.get("/v1/audit?limit=2", headers=auth(keys["viewer"]))).json()
    assert [e["action"] for e in log["entries"]] == ["key.revoke", "key.create"]
    assert log["next_before_id"] is not None
    older = await client.get(
        f"/v1/audit?limit=50&before_id={log['next_before_id']}", headers=auth(keys["viewer"])
    )
    assert "mode.change" in [e["action"] for e in older.json()["entries"]]
    assert not any(new["key"] in json.dumps(e) for e in older.json()["entries"])  # never the key


async def test_viewers_see_what_changed_in_the_audit_log_but_not_which_keys(api):
    client, keys, _, db = api
    made = await client.post(
        "/v1/keys", json={"name": "night shift", "role": "operator"}, headers=auth(keys["admin"])
    )
    assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
    r = await client.patch(
        "/v1/setpoints", json={"ramp_up_w_per_s": 3e5}, headers=auth(made.json()["key"])
    )
    assert r.status_code == 200
    event = {"kind": "shed", "value_w": 1e6, "start_s": FUTURE, "end_s": FUTURE + 600}
    r = await client.post("/v1/events", json=event, headers=auth(made.json()["key"]))
    assert r.status_code == 201 and r.json()["created_by"].startswith("night shift")
    seen = {}
    for role in ("viewer", "operator"):
        page = await client.get("/v1/audit", headers=auth(keys[role]))
        newest_first = page.json()["entries"]
        seen[role] = {e["action"]: e for e in reversed(newest_first)}  # each action's newest
    assert seen["operator"]["key.create"]["new"]["name"] == "night shift"
    assert seen["operator"]["setpoints.change"]["key_name"] == "night shift"
    assert seen["operator"]["event.create"]["new"]["created_by"].startswith("night shift")
    assert seen["viewer"]["event.create"]["new"]["created_by"] == "(a key)"  # an event's too
    viewer_view = json.dumps(seen["viewer"])
    assert "night shift" not in viewer_view and "admin-key" not in viewer_view
    change = seen["viewer"]["setpoints.change"]
    assert change["new"] == {"ramp_up_w_per_s": 3e5} and change["key_id"] is None
    # Nor through the events' and alarms' lists: a key made the event, or acknowledged.
    db.store_alarm({"id": 9, "key": "k", "severity": "warning", "message": "m",
                    "raised_at": time.time()})  # fmt: skip
    assert (await client.post("/v1/alarms/9/ack", headers=auth(made.json()["key"]))).is_success
    for role, shown in (("operator", "night shift"), ("viewer", "(a key)")):
        events = (await client.get("/v1/events", headers=auth(keys[role]))).json()["events"]
        alarms = (await client.get("/v1/alarms", headers=auth(keys[role]))).json()["alarms"]
        assert events[0]["created_by"].startswith(shown)
        assert alarms[0]["acked_by"].startswith(shown)


def test_the_matrix_covers_every_operation(site: SiteConfig, tmp_path: Path):
    controller = Controller(site)
    paths = controller.app.openapi()["paths"]  # what the app says it serves
    served = {(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1") for m in ops}
    assert served == {(m, p) for m, p, *_ in ENDPOINTS}
    controller.close()


async def test_wrong_method_names_the_allowed_ones(api):
    client, keys, _, _ = api
    r = await client.request("OPTIONS", "/v1/setpoints", headers=auth(keys["viewer"]))
    assert r.status_code == 405 and r.headers["allow"] == "GET, PATCH, PUT"
    assert r.headers["content-type"] == "application/problem+json"


async def test_each_change_is_in_force_at_the_next_tick_while_an_event_caps_import(api):
    """Two changes between ticks, a cap event running: the tick runs with the last change."""
    client, keys, ops, _ = api
    now = time.time()
    event = {"kind": "import_cap", "value_w": 9e6, "start_s": now, "end_s": now + 600}
    assert (await client.post("/v1/events", json=event, headers=auth(keys["operator"]))).is_success
    for ramp in (1e5, 2e5, 3e5, 4e5) * 10:  # within a key's burst of changes
        r = await client.patch(
            "/v1/setpoints", json={"ramp_up_w_per_s": ramp}, headers=auth(keys["operator"])
        )
        assert r.status_code == 200
        force = ops.in_force(time.time())
        assert (force.dispatch.ramp_up_w_per_s, force.dispatch.import_cap_w) == (ramp, 9e6)


async def test_a_change_after_an_override_expired_starts_from_the_reverted_values(api):
    """The override's time is up but its revert is not stored yet: a change to another
    setpoint must not bring the expired override back for good."""
    client, keys, ops, db = api
    head = auth(keys["operator"])
    r = await client.patch(
        "/v1/setpoints", json={"ramp_up_w_per_s": 1e5, "ttl_s": 0.1}, headers=head
    )
    assert r.status_code == 200
    await asyncio.sleep(0.2)  # expired; no tick has run to hand its revert over
    r = await client.patch("/v1/setpoints", json={"supply_temperature_c": 30.0}, headers=head)
    assert r.status_code == 200
    assert r.json()["ramp_up_w_per_s"] == 5e5 and r.json()["override"] is None
    assert ops.in_force(time.time()).dispatch.ramp_up_w_per_s == 5e5
    actions = [e["action"] for e in audited(db)]
    assert actions[:2] == ["setpoints.change", "setpoints.revert"]  # newest first


def test_a_saved_revert_the_site_no_longer_accepts_is_dropped_at_start(site: SiteConfig, tmp_path):
    """A revert stored before the site file changed (its SoC band now above soc_max_ratio)
    would make every tick fail at its expiry: it is refused at start, with a log line."""
    db = OpsDB(tmp_path / "ops.sqlite")
    previous = Operations(site, db).setpoints.model_dump() | {"soc_target_high_ratio": 0.99}
    db.put_setting("override", {"previous": previous, "expires_s": time.time() - 1})
    ops = Operations(site, db)
    assert ops.override is None
    assert ops.in_force(time.time()).dispatch.soc_target_high_ratio == 0.7
    db.close()


async def test_a_permanent_change_leaves_a_pending_revert_to_its_own_time(api):
    """A temporary deadband, then a permanent manual power: the deadband still reverts on
    time (it used to become permanent), the manual power stays."""
    client, keys, ops, _ = api
    head = auth(keys["operator"])
    r = await client.patch("/v1/setpoints", json={"deadband_hz": 0.02, "ttl_s": 3600}, headers=head)
    assert r.status_code == 200
    r = await client.patch("/v1/setpoints", json={"manual_battery_w": 1e6}, headers=head)
    assert r.status_code == 200 and r.json()["override"] is not None
    later = ops.in_force(time.time() + 3601)
    assert later.dispatch.deadband_hz == 0.015 and later.setpoints.manual_battery_w == 1e6


async def test_a_change_that_changes_nothing_is_not_audited(api):
    client, keys, ops, db = api
    same = {"ramp_up_w_per_s": ops.setpoints.ramp_up_w_per_s}
    for _ in range(3):
        r = await client.patch("/v1/setpoints", json=same, headers=auth(keys["operator"]))
        assert r.status_code == 200
    assert audited(db) == []


async def test_each_temporary_change_reverts_on_its_own_time(api, site: SiteConfig):
    """Two temporary changes, each with its own end, on other fields and on the same one:
    each goes at its own time; the plan survives a restart."""
    client, keys, ops, db = api
    head, now = auth(keys["operator"]), time.time()
    for body in (
        {"deadband_hz": 0.02, "ttl_s": 3600},
        {"droop": 0.04, "ttl_s": 60},
        {"deadband_hz": 0.03, "ttl_s": 30},
    ):
        assert (await client.patch("/v1/setpoints", json=body, headers=head)).status_code == 200

    def at(offset: float) -> tuple[float, float]:
        d = ops.in_force(now + offset).dispatch
        return d.deadband_hz, d.droop

    for o in (Operations(site, db), ops):  # as a restart finds it, and as it runs
        ops = o
        assert at(10) == (0.03, 0.04)
        assert at(45) == (0.02, 0.04)  # the later deadband gone: the earlier one again
        assert at(90) == (0.02, 0.05)  # the droop's own end
        assert at(3700) == (0.015, 0.05)  # and the first deadband's


async def test_a_change_that_would_break_a_later_revert_is_refused(api):
    """High end of the SoC band up for a minute, low end up for an hour: when the minute is
    over the band would be upside down. Refused, naming the revert; nothing changed."""
    client, keys, ops, _ = api
    head = auth(keys["operator"])
    r = await client.patch(
        "/v1/setpoints", json={"soc_target_high_ratio": 0.9, "ttl_s": 60}, headers=head
    )
    assert r.status_code == 200
    before = ops.setpoints
    r = await client.patch(
        "/v1/setpoints", json={"soc_target_low_ratio": 0.8, "ttl_s": 3600}, headers=head
    )
    assert r.status_code == 422, r.text
    assert "once the temporary change ending at" in r.text and "reverts" in r.text
    assert ops.setpoints == before


def test_layers_past_their_end_at_a_restart_fold_into_checked_states(site: SiteConfig, tmp_path):
    """High end up (ending later), then low end up (ending sooner): each state on the way
    was valid. Found both ended at a restart, they go together, never one at a time in an
    order that was never checked; two layers with one end both go."""
    db = OpsDB(tmp_path / "ops.sqlite")
    ops = Operations(site, db)
    ops.change_setpoints({"soc_target_high_ratio": 0.9}, SYSTEM, ttl_s=20)
    ops.change_setpoints({"soc_target_low_ratio": 0.8}, SYSTEM, ttl_s=10)
    ops.change_setpoints({"droop": 0.04}, SYSTEM, ttl_s=10)
    later = time.time() + 30
    restarted = Operations(site, db)
    force = restarted.in_force(later)
    assert (force.dispatch.soc_target_low_ratio, force.dispatch.soc_target_high_ratio) == (0.5, 0.7)
    assert restarted.writer.flush()
    assert restarted.override is None and restarted.setpoints.droop == 0.05
    db.close()


def test_a_saved_layer_the_site_no_longer_fits_is_dropped_not_a_crash(site_data, tmp_path):
    from controller.sitefile import parse_site

    db = OpsDB(tmp_path / "ops.sqlite")
    Operations(parse_site(site_data), db).change_setpoints(
        {"soc_target_high_ratio": 0.9}, SYSTEM, ttl_s=3600
    )
    site_data["dispatch"]["soc_max_ratio"] = 0.85  # the site file changed meanwhile
    ops = Operations(parse_site(site_data), db)
    assert ops.override is None and ops.in_force(time.time()).dispatch.soc_target_high_ratio == 0.7
    db.close()


async def test_a_put_of_a_temporary_value_makes_it_permanent(api):
    client, keys, ops, _ = api
    head = auth(keys["operator"])
    r = await client.patch("/v1/setpoints", json={"droop": 0.04, "ttl_s": 60}, headers=head)
    assert r.status_code == 200
    body = {k: v for k, v in r.json().items() if k != "override"}
    assert body["droop"] == 0.04
    r = await client.put("/v1/setpoints", json=body, headers=head)  # the same values, for good
    assert r.status_code == 200 and r.json()["override"] is None
    assert ops.in_force(time.time() + 120).dispatch.droop == 0.04


async def test_temporary_modes_stack_and_each_ends_on_its_own_time(api, site: SiteConfig):
    """`safe` for 4 s, then `manual` for 2 s: manual, then safe again, then the mode before
    (it used to end in `safe` for good, with no revert left); a restart finds the plan."""
    client, keys, ops, db = api
    head, now = auth(keys["operator"]), time.time()
    for body in ({"mode": "safe", "ttl_s": 4}, {"mode": "manual", "ttl_s": 2}):
        assert (await client.post("/v1/mode", json=body, headers=head)).status_code == 200
    shown = (await client.get("/v1/mode", headers=head)).json()
    assert shown["mode"] == "manual" and shown["override"]["previous"] == "auto"
    for o in (Operations(site, db), ops):  # as a restart finds it, and as it runs
        assert [o.in_force(now + t).mode for t in (1, 3, 5)] == ["manual", "safe", "auto"]
    assert ops.writer.flush()
    assert ops.mode == "auto" and ops.mode_override is None
    r = await client.post("/v1/mode", json={"mode": "safe", "ttl_s": 60}, headers=head)
    r = await client.post("/v1/mode", json={"mode": "manual"}, headers=head)  # for good
    assert r.status_code == 200 and ops.in_force(time.time() + 120).mode == "manual"


async def test_null_is_no_setpoint_value_except_where_it_means_none(api):
    """Absent means unchanged; `null` is refused where a setpoint has no null value, and the
    schema says so (and states the rules across fields)."""
    client, keys, ops, _ = api
    head = auth(keys["operator"])
    before = ops.setpoints
    for body in ({"ramp_up_w_per_s": None}, {"droop": None}, {"ttl_s": None, "droop": 0.04}):
        r = await client.patch("/v1/setpoints", json=body, headers=head)
        assert r.status_code == 422, body
        assert r.headers["content-type"] == "application/problem+json"
    assert ops.setpoints == before
    r = await client.patch("/v1/setpoints", json={"import_cap_w": None}, headers=head)
    assert r.status_code == 200 and r.json()["import_cap_w"] is None  # null: no cap
    schema = (await client.get("/openapi.json")).json()["components"]["schemas"]
    patch = schema["SetpointsPatch"]
    nullable = {
        name
        for name, field in patch["properties"].items()
        if any(option.get("type") == "null" for option in field.get("anyOf", []))
    }
    assert nullable == {"import_cap_w"}
    assert not any("default" in field for field in patch["properties"].values())
    assert "soc_min_ratio ≤ soc_target_low_ratio" in patch["description"]


def cap_event(start_s: float, end_s: float, value_w: float = 8e6) -> dict:
    return {"kind": "import_cap", "value_w": value_w, "start_s": start_s, "end_s": end_s}


def key_id(token: str) -> str:
    return token.split("_")[1]


def refused_with(r: httpx.Response, status: int, *words: str) -> None:
    """A problem document with `status`, naming each of `words`."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == status and all(w in r.json()["detail"] for w in words), r.text


async def test_planned_events_are_bounded_and_one_past_the_bound_stores_nothing(site_data):
    """At `limits.max_pending_events` planned or running, one more is refused (409, naming
    the bound) and neither stored nor audited; cancelled and ended ones do not count."""
    site = parse_site(site_data | {"limits": {"max_pending_events": 3}})
    async with operate(site) as (client, keys, ops, db):
        head, now = auth(keys["operator"]), time.time()
        made = []
        for start, end in ((0.0, 1.0), (100, 200), (300, 400)):  # the first ends soon
            r = await client.post(
                "/v1/events", json=cap_event(now + start, now + end), headers=head
            )
            assert r.status_code == 201, r.text
            made.append(r.json()["id"])
        listed, log = (await client.get("/v1/events", headers=head)).json(), audited(db)
        r = await client.post("/v1/events", json=cap_event(now + 500, now + 600), headers=head)
        refused_with(r, 409, "3 events are planned or running", "limits.max_pending_events")
        assert (await client.get("/v1/events", headers=head)).json() == listed
        assert audited(db) == log and ops.in_force(now + 550).dispatch.import_cap_w is None
        await asyncio.sleep(max(0.0, now + 1.1 - time.time()))  # the first has ended: one fewer
        assert (await client.post("/v1/events", json=cap_event(now + 500, now + 600),
                                  headers=head)).status_code == 201  # fmt: skip
        assert (await client.post("/v1/events", json=cap_event(now + 700, now + 800),
                                  headers=head)).status_code == 409  # fmt: skip
        assert (await client.delete(f"/v1/events/{made[1]}", headers=head)).status_code == 200
        assert (await client.post("/v1/events", json=cap_event(now + 700, now + 800),
                                  headers=head)).status_code == 201  # fmt: skip


async def test_active_keys_are_bounded_and_one_past_the_bound_stores_nothing(site_data):
    site = parse_site(site_data | {"limits": {"max_active_keys": 4}})
    async with operate(site) as (client, keys, _, db):
        head = auth(keys["admin"])
        made = await client.post(
            "/v1/keys", json={"name": "fourth", "role": "viewer"}, headers=head
        )
        assert made.status_code == 201  # the fixture made three
        listed, log = (await client.get("/v1/keys", headers=head)).json(), audited(db)
        r = await client.post("/v1/keys", json={"name": "fifth", "role": "viewer"}, headers=head)
        refused_with(r, 409, "4 API keys are active", "limits.max_active_keys")
        assert (await client.get("/v1/keys", headers=head)).json() == listed and audited(db) == log
        gone = await client.delete(f"/v1/keys/{made.json()['id']}", headers=head)
        assert gone.status_code == 200  # a revoked key does not count
        r = await client.post("/v1/keys", json={"name": "fifth", "role": "viewer"}, headers=head)
        assert r.status_code == 201


def rows_read(db: OpsDB) -> list[int]:
    """From now on, count every row the file's two connections hand back (a one-item list)."""
    count = [0]

    def counted(cursor: sqlite3.Cursor, row: tuple) -> sqlite3.Row:
        count[0] += 1
        return sqlite3.Row(cursor, row)

    db._conn.row_factory = db._reader.row_factory = counted
    return count


async def test_an_event_is_added_and_cancelled_without_reading_the_others(api):
    """A year of a busy site's events in the table: adding one and cancelling it read their
    own rows, not the table (each used to read all 8,500); the ticks see both at once, and
    the list comes in pages."""
    client, keys, ops, db = api
    now, head = time.time(), auth(keys["operator"])
    past = [("shed", 5e5, t, t + 60, "x", t, None, t, t + 60) for t in range(8500)]
    with contextlib.closing(sqlite3.connect(ops.site.data_dir / "gridpilot.sqlite")) as other:
        other.executemany("INSERT INTO dr_events (kind, value_w, start_s, end_s, created_by,"
                          " created_at, cancelled_at, started_at, ended_at)"
                          " VALUES (?,?,?,?,?,?,?,?,?)", past)  # fmt: skip
        other.commit()
    count = rows_read(db)
    r = await client.post("/v1/events", json=cap_event(now + 10, now + 100), headers=head)
    assert r.status_code == 201 and count[0] < 10, count  # the key, the row stored: a few
    assert ops.in_force(now + 50).dispatch.import_cap_w == 8e6
    count[0] = 0
    r = await client.delete(f"/v1/events/{r.json()['id']}", headers=head)
    assert r.status_code == 200 and count[0] < 10, count  # the key, the row, as cancelled
    assert ops.in_force(now + 50).dispatch.import_cap_w is None
    first = (await client.get("/v1/events", headers=head)).json()
    assert len(first["events"]) == 50 and first["events"][0]["cancelled_at"] is not None
    ids, before = [], None
    for _ in range(3):
        query = {"limit": 100} | ({"before_id": before} if before else {})
        page = (await client.get("/v1/events", params=query, headers=head)).json()
        ids += [e["id"] for e in page["events"]]
        before = page["next_before_id"]
    assert ids == list(range(8501, 8201, -1))  # newest first, none twice, none left out
    r = await client.get("/v1/events", params={"limit": 101}, headers=head)
    refused_with(r, 422, "nothing was changed")


async def test_alarms_keys_and_audit_come_in_pages(api):
    client, keys, _, db = api
    head = auth(keys["admin"])
    for n in (1, 2, 3):  # raised before this start: in the file only
        db.store_alarm({"id": n, "key": f"k{n}", "severity": "warning", "message": "m",
                        "raised_at": time.time(), "cleared_at": time.time()})  # fmt: skip
    for path, name, count in (("/v1/alarms", "alarms", 3), ("/v1/keys", "keys", 3)):
        first = (await client.get(path, params={"limit": 2}, headers=head)).json()
        assert len(first[name]) == 2 and first["next_before_id"] == first[name][-1]["id"]
        rest = await client.get(
            path, params={"limit": 2, "before_id": first["next_before_id"]}, headers=head
        )
        assert len(rest.json()[name]) == count - 2 and rest.json()["next_before_id"] is None
        ids = [x["id"] for x in first[name] + rest.json()[name]]
        assert len(set(ids)) == count
    for path in ("/v1/alarms", "/v1/keys", "/v1/audit", "/v1/events"):
        refused_with(await client.get(path, params={"limit": 101}, headers=head), 422, "")


async def test_the_last_admin_key_cannot_be_revoked(api):
    """Without an active admin key no key could be made or revoked through the API any more:
    revoking the last is refused (409, naming why), and nothing changes."""
    client, keys, _, db = api
    admin = keys["admin"]
    r = await client.delete(f"/v1/keys/{key_id(admin)}", headers=auth(admin))
    refused_with(r, 409, "last active admin key", "make another admin key")
    assert (await client.get("/v1/keys", headers=auth(admin))).status_code == 200
    assert audited(db) == []
    other = await client.post("/v1/keys", json={"name": "night", "role": "admin"},
                              headers=auth(admin))  # fmt: skip
    second = other.json()["key"]
    r = await client.delete(f"/v1/keys/{key_id(admin)}", headers=auth(second))
    assert r.status_code == 200  # another admin remains
    r = await client.delete(f"/v1/keys/{key_id(second)}", headers=auth(second))
    refused_with(r, 409, "last active admin key")


@pytest.mark.parametrize("fault", ["locked", "audit refused"])
async def test_a_change_the_file_refuses_changes_nothing(site: SiteConfig, monkeypatch, fault):
    """Another process holds the file's write lock past the busy timeout, or the second write
    of a change (its audit entry) fails: each change (event added or cancelled, key made or
    revoked, a stored alarm acknowledged, setpoints) answers a problem document, and neither
    memory nor the table changes; the same change succeeds once the file takes it."""
    monkeypatch.setattr(opsdb, "BUSY_TIMEOUT_S", 0.2)
    async with operate(site) as (client, keys, ops, db):
        head, now = auth(keys["admin"]), time.time()
        planned = (await client.post("/v1/events", json=cap_event(now + 100, now + 200),
                                     headers=head)).json()  # fmt: skip
        viewer = keys["viewer"]
        db.store_alarm({"id": 7, "key": "k", "severity": "warning", "message": "m",
                        "raised_at": now})  # fmt: skip  # from before this start
        path = ops.site.data_dir / "gridpilot.sqlite"
        other = sqlite3.connect(path, isolation_level=None)
        if fault == "audit refused":  # as a full disk would refuse the second write
            other.execute("CREATE TRIGGER refuse BEFORE INSERT ON audit BEGIN"
                          " SELECT RAISE(ABORT, 'no room for the audit entry'); END")  # fmt: skip
        table = list(other.iterdump())

        async def shown() -> tuple:
            lists = [(await client.get(p, headers=head)).json()
                     for p in ("/v1/events", "/v1/keys", "/v1/alarms", "/v1/audit")]  # fmt: skip
            return lists, ops.setpoints, ops.override

        before = await shown()
        changes = [
            ("POST", "/v1/events", cap_event(now + 150, now + 250, 7e6)),
            ("DELETE", f"/v1/events/{planned['id']}", None),
            ("POST", "/v1/keys", {"name": "late", "role": "viewer"}),
            ("DELETE", f"/v1/keys/{key_id(viewer)}", None),
            ("POST", "/v1/alarms/7/ack", None),
            ("PATCH", "/v1/setpoints", {"droop": 0.04}),
        ]
        if fault == "locked":
            other.execute("BEGIN EXCLUSIVE")  # a backup tool, say
        for method, url, body in changes:
            r = await client.request(method, url, json=body, headers=head)
            refused_with(r, 503, "nothing was changed")
        assert await shown() == before and list(other.iterdump()) == table
        assert (await client.get("/v1/mode", headers=auth(viewer))).status_code == 200
        other.execute("ROLLBACK" if fault == "locked" else "DROP TRIGGER refuse")
        other.close()
        # What a tick sees (a tick at these times records the event's start: only now).
        assert [ops.in_force(now + t).dispatch.import_cap_w for t in (50, 150, 250)] == [
            None, 8e6, None
        ]  # fmt: skip
        assert ops.writer.flush()
        for method, url, body in changes:  # nothing left half done: each goes through now
            r = await client.request(method, url, json=body, headers=head)
            assert r.is_success, (url, r.text)
        assert ops.in_force(now + 150).dispatch.import_cap_w == 7e6


def test_the_bridge_answers_a_malformed_request_and_goes_on(site: SiteConfig):
    """What comes over the channel is checked like any input: an operation that is no name, or
    one it does not know, answers 400 (counted under a bounded label), and nothing breaks."""
    controller = Controller(site)
    try:
        for message in ({"id": 1, "op": ["state"]}, {"id": 2, "op": "drop_tables"}, {"id": 3}):
            reply = controller.bridge.handle(message)
            assert reply["ok"] is False and reply["status"] == 400, reply
        assert controller.bridge.handle({"id": 4, "op": "mode"})["ok"] is True
    finally:
        controller.close()
