"""The OpenADR 3 VEN through the product: the simulated plant under `gridpilot run`'s
controller, with its VEN talking to the VTN simulator over real HTTP; the utility's side made
with the openadr3-client library's business-logic client. What counts is read where an
operator or the utility would read it: the plant's meter, the API, the metrics, the VTN's
reports."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from importlib import import_module
from typing import Any

import pytest
from openadr3_client._models.common.interval import Interval
from openadr3_client._models.common.interval_period import IntervalPeriod
from openadr3_client.bl.http_factory import BusinessLogicHttpClientFactory
from openadr3_client.version import OADRVersion

from controller.grid.config import OpenADRConfig
from controller.grid.ven import Ven
from controller.service import Controller
from drivers.sim.vtn import VtnServer
from tests.plant import Running, modbus_only, site_running, until

VEN_SECRET, BL_SECRET = "ven-secret-0123456789", "utility-secret-0123456789"
MW = 1e6
RAMP_W_PER_S = 5e5  # the demo site's grid ramp limit
M = "openadr3_client.oadr301.models"


@pytest.fixture(autouse=True)
def plain_http_oauth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the VTN simulator is plain HTTP


@pytest.fixture
def vtn():
    with VtnServer({"gridpilot": VEN_SECRET, "utility": BL_SECRET}) as server:
        yield server


def openadr_site(site_data: dict[str, Any], vtn: VtnServer, tmp_path, **settings: Any):
    secret = tmp_path / "openadr-secret"
    secret.write_text(VEN_SECRET)
    site_data["openadr"] = {
        "enabled": True,
        "vtn_url": vtn.url,
        "token_url": vtn.token_url,
        "client_id": "gridpilot",
        "client_secret_file": str(secret),
        "allow_http": True,
        "ven_name": "site-a",
        "programs": ["capacity"],
        "poll_s": 1.0,
        "report_s": 10.0,
        "simple_levels": {3: {"import_cap_w": 5e6}},
    } | settings
    return modbus_only(site_data)


class Utility:
    """The utility's side: a program and its events, made with the library's BL client."""

    def __init__(self, vtn: VtnServer) -> None:
        self.vtn = vtn
        self.bl = BusinessLogicHttpClientFactory.create_http_bl_client(
            vtn.url,
            "utility",
            BL_SECRET,
            vtn.token_url,
            allow_insecure_http=True,
            version=OADRVersion.OADR_301,
        )
        new_program = import_module(f"{M}.program.program").NewProgram
        self.program = self.bl.programs.create_program(new_program(program_name="capacity"))

    def cap(self, cap_w: float, start_s: float, duration_s: float) -> Any:
        payloads = import_module(f"{M}.event.event_payload")
        new_event = import_module(f"{M}.event.event").NewEvent
        kind = payloads.EventPayloadType.IMPORT_CAPACITY_LIMIT
        descriptor = payloads.EventPayloadDescriptor(payload_type=kind, units="KW")
        return self.bl.events.create_event(
            new_event(
                program_id=self.program.id,
                event_name="capacity limit",
                payload_descriptors=(descriptor,),
                intervals=(
                    Interval(
                        id=0,
                        interval_period=IntervalPeriod(
                            start=datetime.fromtimestamp(start_s, UTC),
                            duration=timedelta(seconds=duration_s),
                        ),
                        payloads=(payloads.EventPayload(type=kind, values=(cap_w / 1e3,)),),
                    ),
                ),
            )
        )

    def change_cap(self, event: Any, cap_w: float) -> Any:
        update = import_module(f"{M}.event.event").EventUpdate
        interval = event.intervals[0]
        payload = interval.payloads[0].model_copy(update={"values": (cap_w / 1e3,)})
        changed = interval.model_copy(update={"payloads": (payload,)})
        return self.bl.events.update_event_by_id(
            event.id, event.update(update(intervals=(changed,)))
        )

    def delete(self, event: Any) -> None:
        self.bl.events.delete_event_by_id(event.id)

    def raw(self, payload_type: str, value: Any, start_s: float, duration_s: float) -> str:
        """An event the library's client would refuse to make: straight into the VTN."""
        return self.vtn.put_raw_event(
            {
                "programID": self.program.id,
                "eventName": f"raw {payload_type}",
                "intervalPeriod": {
                    "start": datetime.fromtimestamp(start_s, UTC).isoformat(),
                    "duration": f"PT{duration_s:.0f}S",
                },
                "intervals": [{"id": 0, "payloads": [{"type": payload_type, "values": [value]}]}],
            }
        )


async def vtn_events(running: Running) -> list[dict[str, Any]]:
    page = (await running.api.get("/v1/events", params={"limit": 100})).json()["events"]
    return [e for e in page if e["source"] == "openadr"]


def meter_wall(running: Running) -> list[tuple[float, float]]:
    """The plant's own grid draw at every physics step, on the wall clock: (unix s, W)."""
    offset = time.time() - time.monotonic()
    return [(t + offset, w) for t, w in list(running.stack.grid_w)]


def meter_energy_j(samples: list[tuple[float, float]], start_s: float, end_s: float) -> float:
    """The plant's own integration of import, as its meter counts it (rectangles per step)."""
    total, prev = 0.0, None
    for t, w in samples:
        if prev is not None and start_s < t <= end_s:
            total += max(prev[1], 0.0) * (t - prev[0])
        prev = (t, w)
    return total


def payload(report: dict[str, Any], kind: str) -> float | str:
    (interval,) = report["resources"][0]["intervals"]
    return next(p["values"][0] for p in interval["payloads"] if p["type"] == kind)


@pytest.mark.serial  # the plant's meter against the cap, tick by tick: no other test's CPU
async def test_a_utility_cap_is_held_at_the_meter_changed_cancelled_reported_and_measured(
    site_data, vtn: VtnServer, tmp_path
):
    site = openadr_site(site_data, vtn, tmp_path)
    utility = await asyncio.to_thread(Utility, vtn)
    async with site_running(site) as running:
        await until(lambda: running.controller.ven.status.reachable, 10, "the VTN read")
        await asyncio.sleep(3.0)
        # 3 MW under the load's peaks (the trace swings 3–10 MW each step, pausing every
        # 10 s): the batteries (4 MW of BESS besides the UPSs' reserve) carry the rest.
        await until(lambda: len(running.records) > 120, 15, "12 s of load")
        cap_w = round(max(r.site_load_w for r in running.records[-120:]) - 3.0 * MW, -3)
        start = time.time() + 10.0  # announced ahead: the grid is under the cap from start
        event = await asyncio.to_thread(utility.cap, cap_w, start, 40.0)
        await until(lambda: running.controller.ven.status.events_in_force == 1, 5, "the event")
        (stored,) = await vtn_events(running)
        assert (stored["kind"], stored["value_w"], stored["ref"]) == (
            "import_cap",
            cap_w,
            f"{event.id}/0",
        )
        assert stored["start_s"] == pytest.approx(start, abs=1e-3)
        assert stored["created_by"].startswith("openadr:site-a")

        # Bad payloads next to it: counted, logged once, and nothing stored or changed.
        for bad in (
            ("IMPORT_CAPACITY_LIMIT", -5000, start, 60),  # a cap of −5 MW
            ("IMPORT_CAPACITY_LIMIT", 7000, time.time() - 600, 60),  # over before it came
            ("NOT_A_SIGNAL", 1, start, 60),
            ("IMPORT_CAPACITY_LIMIT", "5 MW", start, 60),
        ):
            await asyncio.to_thread(utility.raw, *bad)
        refused = {"out_of_range": 1, "past": 1, "unknown_signal": 1, "bad_value": 1}
        await until(lambda: dict(running.controller.ven.status.refused) == refused, 5, "refusals")
        await asyncio.sleep(1.5)  # a few more reads: each refusal counted once
        assert dict(running.controller.ven.status.refused) == refused
        assert len(await vtn_events(running)) == 1

        # From its start the plant's own meter stays under the cap (its 200 ms mean: the
        # meter's window; the batteries carry the load's swings).
        await until(lambda: time.time() > start + 12, 20, "12 s of the event")
        drawn = [w for t, w in meter_wall(running) if start <= t <= start + 12]
        assert len(drawn) > 100 and max(drawn) <= cap_w + 0.05 * MW, max(drawn) - cap_w

        # The utility lowers the cap while it runs: the old version ends, the new one holds.
        lower_w = cap_w - 0.5 * MW
        await asyncio.to_thread(utility.change_cap, event, lower_w)
        changed_at = time.time()
        await until(
            lambda: running.records[-1].in_force.dispatch.import_cap_w == lower_w, 5, "new cap"
        )
        await asyncio.sleep(0.5 * MW / RAMP_W_PER_S + 2.0)  # down the ramp to the new cap
        settled = time.time()
        await asyncio.sleep(5.0)
        drawn = [w for t, w in meter_wall(running) if settled <= t <= settled + 5]
        assert max(drawn) <= lower_w + 0.05 * MW
        rows = await vtn_events(running)
        assert [(r["value_w"], r["cancelled_at"] is not None) for r in reversed(rows)] == [
            (cap_w, True),
            (lower_w, False),
        ]
        assert rows[1]["cancelled_at"] == pytest.approx(changed_at, abs=3.0)

        # Reports: every 10 s, the meter's energy within 1 % of the plant's own integration.
        await until(lambda: len(vtn.reports()) >= 2, 25, "two reports")
        samples = meter_wall(running)
        for report in vtn.reports()[:2]:
            assert report["eventID"] == event.id and report["clientName"] == "site-a"
            period = report["resources"][0]["intervalPeriod"]
            begin = datetime.fromisoformat(period["start"]).timestamp()
            seconds = float(period["duration"].removeprefix("PT").removesuffix("S"))
            own_j = meter_energy_j(samples, begin, begin + seconds)
            assert float(payload(report, "USAGE")) * 3.6e6 == pytest.approx(own_j, rel=0.01)
            assert float(payload(report, "DEMAND")) * 1e3 == pytest.approx(
                own_j / seconds, rel=0.01
            )
            assert payload(report, "OPERATING_STATE") == "NORMAL"
        # Once measured, the baseline rides along, and the change in usage against it (to the
        # microsecond the interval's duration is written in).
        measured = next(r for r in vtn.reports() if "BASELINE" in json.dumps(r))
        seconds = float(measured["resources"][0]["intervalPeriod"]["duration"].strip("PTS"))
        baseline_kwh = float(payload(measured, "BASELINE")) * seconds / 3600
        assert float(payload(measured, "DELTA_USAGE")) == pytest.approx(
            float(payload(measured, "USAGE")) - baseline_kwh, rel=1e-4
        )

        # The utility deletes the event: cancelled here, the grid free again.
        await asyncio.to_thread(utility.delete, event)
        await until(lambda: running.controller.ven.status.events_in_force == 0, 5, "cancelled")
        read_at = running.controller.ven.status.last_ok_s
        await until(lambda: running.controller.ven.status.last_ok_s > read_at + 1, 5, "reads on")
        await until(
            lambda: running.records[-1].in_force.dispatch.import_cap_w is None, 5, "cap gone"
        )
        new_id = (await vtn_events(running))[0]["id"]
        await until(lambda: new_id in dict(_kept(running)), 15, "the measurement kept")
        perf = (await running.api.get(f"/v1/events/{new_id}/performance")).json()
        assert perf["kept"] is True and perf["kind"] == "import_cap"
        assert perf["held"] is True and perf["response_time_s"] is not None
        # Against the plant's own meter: the grid drawn in the event is the baseline less the
        # delivered reduction, and the energy not drawn that reduction over the seconds
        # measured. (The sign is the site's: a baseline from its first minute may be low.)
        drawn = [w for t, w in meter_wall(running) if perf["start_s"] <= t < perf["end_s"]]
        assert perf["baseline"]["mean_w"] - perf["delivered_mean_w"] == pytest.approx(
            sum(drawn) / len(drawn), rel=0.01
        )
        seconds = perf["coverage"] * (perf["end_s"] - perf["start_s"])
        assert perf["energy_not_drawn_j"] == pytest.approx(
            perf["delivered_mean_w"] * seconds, rel=1e-6
        )
        await running.scrape()
        assert running.metric("gridpilot_openadr_reachable", site=site.name) == 1.0
        assert running.metric("gridpilot_openadr_refused_total", reason="past") == 1.0
        assert running.metric("gridpilot_openadr_reports_total", site=site.name) >= 2


def _kept(running: Running) -> list[tuple[int, str]]:
    return running.controller.store.query("SELECT event_id, figures FROM event_performance")


async def test_through_a_vtn_outage_and_a_refused_token_the_event_stays_and_an_alarm_says_so(
    site_data, vtn: VtnServer, tmp_path
):
    site = openadr_site(site_data, vtn, tmp_path, alarm_after_s=20.0)
    utility = await asyncio.to_thread(Utility, vtn)
    async with site_running(site) as running:
        await until(lambda: running.controller.ven.status.reachable, 10, "the VTN read")
        grid_w = running.records[-1].readings.grid_w
        cap_w = round(grid_w + 3 * MW, -3)  # a cap that does not bind: the plant runs free
        await asyncio.to_thread(utility.cap, cap_w, time.time() + 1.0, 300.0)
        await until(lambda: running.controller.ven.status.events_in_force == 1, 5, "the event")

        vtn.go_down()  # 60 s without the VTN
        down_at = time.time()
        await until(lambda: running.controller.ven.status.last_error == "unreachable", 5, "seen")

        def vtn_alarms() -> list[Any]:
            return [a for a in running.controller.alarms.active if a.key == "openadr_unreachable"]

        await until(vtn_alarms, 30, "the alarm")
        (alarm,) = vtn_alarms()
        assert time.time() - down_at >= 20.0
        assert "stay in force" in alarm.message
        await until(lambda: time.time() - down_at >= 60.0, 60, "a minute")
        assert running.records[-1].in_force.dispatch.import_cap_w == cap_w  # still in force
        assert len(running.records[-1].in_force.events) == 1
        vtn.come_back()
        await until(lambda: running.controller.ven.status.reachable, 10, "back")
        await until(lambda: not vtn_alarms(), 10, "the alarm cleared")

        vtn.refuse_tokens = True
        vtn.expire_tokens()
        await until(
            lambda: running.controller.ven.status.last_error == "token_refused", 10, "refused"
        )
        assert running.records[-1].in_force.dispatch.import_cap_w == cap_w
        vtn.refuse_tokens = False
        await until(lambda: running.controller.ven.status.reachable, 10, "a new token")
        errors = dict(running.controller.ven.status.errors)
        assert errors["unreachable"] >= 1 and errors["token_refused"] >= 1
        assert errors.get("unauthorized", 0) <= 1  # the expired token: one 401, then a new one
        for _ in range(50):  # the API's view: as of its newest tick
            state = (await running.api.get("/v1/state")).json()["openadr"]
            if state["reachable"]:
                break
            await asyncio.sleep(0.1)
        assert state["reachable"] is True and state["events_in_force"] == 1
        assert state["errors"]["unreachable"] >= 1 and state["errors"]["token_refused"] >= 1


async def test_the_ven_speaks_3_1_0_and_finds_the_token_endpoint_itself(site, vtn, tmp_path):
    """The VEN of a 3.1.0 site (no token URL: discovered from the VTN) registers, reads the
    program's event and stores it as the operators' would be, through `Operations`."""
    from openadr3_client._models.common.interval import Interval as Interval310

    m310 = "openadr3_client.oadr310.models"
    bl = BusinessLogicHttpClientFactory.create_http_bl_client(
        vtn.url, "utility", BL_SECRET, None, allow_insecure_http=True,
        version=OADRVersion.OADR_310,
    )  # fmt: skip
    program = bl.programs.create_program(
        import_module(f"{m310}.program.program").NewProgram(program_name="capacity")
    )
    payloads = import_module(f"{m310}.event.event_payload")
    simple = payloads.EventPayloadType.SIMPLE
    start = datetime.now(UTC) + timedelta(minutes=5)
    bl.events.create_event(
        import_module(f"{m310}.event.event").NewEvent(
            program_id=program.id,
            intervals=(
                Interval310(
                    id=7,
                    interval_period=IntervalPeriod(start=start, duration=timedelta(minutes=30)),
                    payloads=(payloads.EventPayload(type=simple, values=(3,)),),
                ),
            ),
        )
    )
    secret = tmp_path / "secret"
    secret.write_text(VEN_SECRET)
    cfg = OpenADRConfig(
        enabled=True, version="3.1.0", vtn_url=vtn.url, client_id="gridpilot",
        client_secret_file=secret, allow_http=True, ven_name="site-a", programs=["capacity"],
        simple_levels={3: {"import_cap_w": 5e6}},
    )  # fmt: skip
    controller = Controller(site)
    try:
        ven = Ven(cfg, controller.operations, lambda: None)
        await ven.cycle()
        assert ven.status.reachable and ven.status.ven_id is not None
        (row,) = controller.db.events_from("openadr", time.time())
        assert (row["kind"], row["value_w"], row["source"]) == ("import_cap", 5e6, "openadr")
        assert row["ref"].endswith("/7") and row["start_s"] == pytest.approx(start.timestamp())
        assert [v["venName"] for v in vtn.state.all("vens")] == ["site-a"]
        await ven.cycle()  # read again: nothing changes
        assert len(controller.db.events_from("openadr", time.time())) == 1
    finally:
        controller.close()


async def test_a_vtn_notification_makes_the_ven_read_at_once_and_a_stranger_cannot(
    site_data, vtn: VtnServer, tmp_path
):
    """Subscribed (the VTN calls back), the VEN reads a new event within a second or two,
    long before its next poll; a call back without its token is refused and reads nothing."""
    api_port = site_data["api_port"]
    site = openadr_site(
        site_data, vtn, tmp_path, poll_s=600.0,
        callback_url=f"http://127.0.0.1:{api_port}/openadr/notify",
    )  # fmt: skip
    utility = await asyncio.to_thread(Utility, vtn)
    async with site_running(site) as running:
        await until(lambda: running.controller.ven.status.reachable, 10, "the first read")
        (sub,) = vtn.state.all("subscriptions")
        assert sub["clientName"] == "site-a" and sub["programID"] == utility.program.id
        reads = running.controller.ven.status.last_ok_s
        made = time.time()
        await asyncio.to_thread(utility.cap, 20 * MW, made + 3600, 600.0)
        await until(lambda: running.controller.ven.status.events_in_force == 1, 5, "notified")
        assert running.controller.ven.status.last_ok_s > reads
        assert time.time() - made < 5.0  # the poll is 600 s away
        stranger = await running.api.post(
            "/openadr/notify", headers={"Authorization": "Bearer not-the-token"}, json={}
        )
        assert stranger.status_code == 401
        assert (await running.api.post("/openadr/notify", json={})).status_code == 401
