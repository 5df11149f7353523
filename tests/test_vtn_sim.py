"""The VTN simulator against the openadr3-client library's own VEN and BL clients, over real
sockets, for OpenADR 3.0.1 and 3.1.0: what the clients send round-trips, and what the library
raises when tokens are refused or expire, when the VTN is down and when an event is malformed."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import import_module
from types import ModuleType
from typing import Any

import httpx
import pytest
import requests
from oauthlib.oauth2.rfc6749.errors import InvalidClientError
from openadr3_client._models.common.interval import Interval
from openadr3_client._models.common.interval_period import IntervalPeriod
from openadr3_client.bl.http_factory import BusinessLogicHttpClientFactory
from openadr3_client.ven.http_factory import VirtualEndNodeHttpClientFactory
from openadr3_client.version import OADRVersion
from pydantic import ValidationError

from drivers.sim.vtn import VtnServer

CLIENTS = {"bl-client": "bl-secret", "ven-client": "ven-secret"}
CAP_KW = 5000.0  # OpenADR's unit is KW: 5 MW


@dataclass(frozen=True)
class Lib:
    """One OpenADR version's side of the library: its models, and the few that differ."""

    version: OADRVersion
    package: str

    def models(self, name: str) -> ModuleType:
        return import_module(f"openadr3_client.{self.package}.models.{name}")

    @property
    def is_301(self) -> bool:
        return self.version is OADRVersion.OADR_301

    def target(self, name: str) -> Any:
        # 3.0.1 targets are typed value maps, 3.1.0's are plain strings.
        return (
            self.models("target").Target(type="RESOURCE_NAME", values=(name,))
            if self.is_301
            else name
        )

    def target_filter(self, name: str) -> Any:
        filters = import_module(f"openadr3_client.{self.package}._vtn.interfaces.filters")
        if self.is_301:
            return filters.TargetFilter(target_type="RESOURCE_NAME", target_values=[name])
        return filters.TargetFilter(targets=[name])

    def pagination(self, skip: int, limit: int) -> Any:
        filters = import_module(f"openadr3_client.{self.package}._vtn.interfaces.filters")
        return filters.PaginationFilter(skip=skip, limit=limit)


LIBS = [Lib(OADRVersion.OADR_301, "oadr301"), Lib(OADRVersion.OADR_310, "oadr310")]


@pytest.fixture(params=LIBS, ids=lambda lib: lib.package)
def lib(request: pytest.FixtureRequest) -> Lib:
    return request.param


@pytest.fixture(autouse=True)
def plain_http_oauth(monkeypatch: pytest.MonkeyPatch) -> None:
    # oauthlib refuses a token URL that is not https unless told otherwise: a VEN talking plain
    # HTTP to a VTN (tests, demo) needs this in its environment too.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")


@pytest.fixture
def vtn() -> Iterator[VtnServer]:
    with VtnServer(CLIENTS) as server:
        yield server


def bl_client(vtn: VtnServer, lib: Lib, secret: str = "bl-secret") -> Any:
    # 3.1.0 finds the token URL by the VTN's discovery endpoint; 3.0.1 must be told it.
    token_url = vtn.token_url if lib.is_301 else None
    return BusinessLogicHttpClientFactory.create_http_bl_client(
        vtn.url, "bl-client", secret, token_url, allow_insecure_http=True, version=lib.version
    )


def ven_client(vtn: VtnServer, lib: Lib, secret: str = "ven-secret") -> Any:
    token_url = vtn.token_url if lib.is_301 else None
    return VirtualEndNodeHttpClientFactory.create_http_ven_client(
        vtn.url, "ven-client", secret, token_url, allow_insecure_http=True, version=lib.version
    )


def interval(lib: Lib, payload_type: str, values: tuple[Any, ...], start: datetime) -> Interval:
    payloads = lib.models("event.event_payload")
    return Interval(
        id=0,
        interval_period=IntervalPeriod(start=start, duration=timedelta(hours=1)),
        payloads=(
            payloads.EventPayload(type=payloads.EventPayloadType(payload_type), values=values),
        ),
    )


def new_event(lib: Lib, program_id: str, name: str, payload_type: str, values: tuple[Any, ...]):
    payloads = lib.models("event.event_payload")
    descriptor = payloads.EventPayloadDescriptor(
        payload_type=payloads.EventPayloadType(payload_type),
        units="KW" if payload_type == "IMPORT_CAPACITY_LIMIT" else None,
    )
    return lib.models("event.event").NewEvent(
        program_id=program_id,
        event_name=name,
        targets=(lib.target("site-a"),) if payload_type == "IMPORT_CAPACITY_LIMIT" else None,
        payload_descriptors=(descriptor,),
        intervals=(interval(lib, payload_type, values, datetime.now(UTC)),),
    )


def program_and_events(vtn: VtnServer, lib: Lib) -> tuple[Any, Any, Any]:
    """A program with a 5 MW import cap event (targeted at site-a) and a SIMPLE event."""
    bl = bl_client(vtn, lib)
    program = bl.programs.create_program(
        lib.models("program.program").NewProgram(program_name="capacity")
    )
    cap = bl.events.create_event(
        new_event(lib, program.id, "cap", "IMPORT_CAPACITY_LIMIT", (CAP_KW,))
    )
    simple = bl.events.create_event(new_event(lib, program.id, "simple", "SIMPLE", (1,)))
    return program, cap, simple


def cap_of(event: Any) -> float:
    return event.intervals[0].payloads[0].values[0]


def test_ven_reads_what_bl_wrote(vtn: VtnServer, lib: Lib) -> None:
    program, cap, simple = program_and_events(vtn, lib)
    ven = ven_client(vtn, lib)

    assert [p.id for p in ven.programs.get_programs(None, None)] == [program.id]
    events = ven.events.get_events(None, None, program.id)
    assert [e.id for e in events] == [cap.id, simple.id]
    assert events[0] == cap and events[1] == simple  # every field as the BL client sent it
    assert cap_of(events[0]) == CAP_KW
    assert events[0].payload_descriptors[0].payload_type == "IMPORT_CAPACITY_LIMIT"
    assert events[1].intervals[0].payloads[0].type == "SIMPLE"
    assert ven.events.get_event_by_id(cap.id) == cap
    assert ven.events.get_events(None, None, "no-such-program") == ()
    # Filters and pages as the spec has them.
    assert [e.id for e in ven.events.get_events(lib.target_filter("site-a"), None, None)] == [
        cap.id
    ]
    assert ven.events.get_events(lib.target_filter("site-b"), None, None) == ()
    assert [e.id for e in ven.events.get_events(None, lib.pagination(1, 1), None)] == [simple.id]
    assert cap.created_date_time == cap.modification_date_time


def test_ven_registers_and_reports(vtn: VtnServer, lib: Lib) -> None:
    program, cap, _ = program_and_events(vtn, lib)
    ven = ven_client(vtn, lib)
    vens = lib.models("ven.ven")
    new_ven = vens.NewVen if lib.is_301 else vens.NewVenVenRequest
    registered = ven.vens.create_ven(new_ven(ven_name="gridpilot"))
    assert [v.id for v in ven.vens.get_vens("gridpilot", None, None)] == [registered.id]
    assert ven.vens.get_vens("someone-else", None, None) == ()

    if lib.is_301:  # 3.0.1: a VEN's resources under /vens/{venID}/resources
        resource = lib.models("ven.resource").NewResource(
            resource_name="bess-1", ven_id=registered.id
        )
        created = ven.vens.create_ven_resource(registered.id, resource)
        assert ven.vens.get_ven_resources(registered.id, None, None, None) == (created,)
        rename = lib.models("ven.resource").ResourceUpdate(resource_name="bess-2")
        renamed = ven.vens.update_ven_resource_by_id(
            registered.id, created.id, created.update(rename)
        )
        with pytest.raises(requests.HTTPError):  # not under another VEN
            ven.vens.get_ven_resource_by_id("other-ven", created.id)
        ven.vens.delete_ven_resource_by_id(registered.id, created.id)
        assert ven.vens.get_ven_resources(registered.id, None, None, None) == ()
    else:  # 3.1.0: /resources, clientID provisioned by the VTN
        resources = lib.models("resource.resource")
        resource = resources.NewResourceVenRequest(resource_name="bess-1", ven_id=registered.id)
        created = ven.resources.create_resource(resource)
        assert created.client_id == "ven-client" and registered.client_id == "ven-client"
        assert ven.resources.get_resources(ven_id=registered.id) == (created,)
        rename = resources.ResourceUpdateVenRequest(resource_name="bess-2", ven_id=registered.id)
        renamed = ven.resources.update_resource_by_id(created.id, rename)
        ven.resources.delete_resource_by_id(created.id)
        assert ven.resources.get_resources(ven_id=registered.id) == ()
    assert renamed.resource_name == "bess-2" and renamed.id == created.id

    reports = lib.models("report.report")
    payloads = lib.models("report.report_payload")
    reading = payloads.ReportPayload(type=payloads.ReportPayloadType.USAGE, values=(4200.0,))
    resource_report = reports.ReportResource(
        resource_name="site-a", intervals=(Interval(id=0, payloads=(reading,)),)
    )
    program_id = {"program_id": program.id} if lib.is_301 else {}  # 3.1.0 reports have none
    posted = ven.reports.create_report(
        reports.NewReport(
            **program_id, event_id=cap.id, client_name="gridpilot", resources=(resource_report,)
        )
    )

    bl = bl_client(vtn, lib)
    seen = bl.reports.get_reports(None, None, cap.id, "gridpilot")
    assert seen == (posted,)
    assert seen[0].resources[0].intervals[0].payloads[0].values == (4200.0,)
    assert bl.reports.get_reports(None, None, "other-event", None) == ()
    [stored] = vtn.reports()
    assert stored["clientID"] == "ven-client"  # who posted it
    assert stored["objectType"] == "REPORT" and stored["eventID"] == cap.id


def test_update_and_delete(vtn: VtnServer, lib: Lib) -> None:
    program, cap, simple = program_and_events(vtn, lib)
    bl, ven = bl_client(vtn, lib), ven_client(vtn, lib)
    update = lib.models("event.event").EventUpdate(
        program_id=program.id,
        event_name="cap",
        intervals=(interval(lib, "IMPORT_CAPACITY_LIMIT", (3000.0,), datetime.now(UTC)),),
    )
    # 3.0.1 PUTs the whole ExistingEvent (its id, old times and all), 3.1.0 an EventUpdate.
    updated = bl.events.update_event_by_id(cap.id, cap.update(update) if lib.is_301 else update)

    assert updated.modification_date_time > cap.modification_date_time
    assert updated.created_date_time == cap.created_date_time
    seen = ven.events.get_event_by_id(cap.id)
    assert cap_of(seen) == 3000.0 and seen.modification_date_time == updated.modification_date_time
    assert seen.payload_descriptors == cap.payload_descriptors  # fields not sent are kept

    deleted = bl.events.delete_event_by_id(cap.id)
    assert deleted.id == cap.id
    assert [e.id for e in ven.events.get_events(None, None, program.id)] == [simple.id]
    with pytest.raises(requests.HTTPError) as missing:
        ven.events.get_event_by_id(cap.id)
    assert missing.value.response.status_code == 404


def test_refused_token_raises_invalid_client(vtn: VtnServer, lib: Lib) -> None:
    wrong = ven_client(vtn, lib, secret="wrong")
    with pytest.raises(InvalidClientError):
        wrong.events.get_events(None, None, None)

    vtn.refuse_tokens = True
    refused = ven_client(vtn, lib)
    with pytest.raises(InvalidClientError):
        refused.events.get_events(None, None, None)
    assert ("GET", "/events", 200) not in vtn.requests  # the API was never reached

    vtn.refuse_tokens = False
    assert refused.events.get_events(None, None, None) == ()


def test_expired_token_is_a_401_the_library_does_not_renew(vtn: VtnServer, lib: Lib) -> None:
    ven = ven_client(vtn, lib)
    assert ven.events.get_events(None, None, None) == ()
    vtn.expire_tokens()

    for _ in range(2):  # its token manager keeps the token for half of expires_in: no re-fetch
        with pytest.raises(requests.HTTPError) as refused:
            ven.events.get_events(None, None, None)
        assert refused.value.response.status_code == 401
        assert refused.value.response.headers["content-type"] == "application/problem+json"
    assert ven_client(vtn, lib).events.get_events(None, None, None) == ()  # a new client does


def test_short_lived_tokens_are_fetched_again(lib: Lib) -> None:
    # The library keeps a token for half its expires_in (rounded down to whole seconds): at 1 s
    # it fetches one for every request, so it never uses one the VTN has let expire.
    with VtnServer(CLIENTS, token_ttl_s=1.0) as vtn:
        ven = ven_client(vtn, lib)
        for _ in range(3):
            assert ven.events.get_events(None, None, None) == ()
        served = [r for r in vtn.requests if r[1] in ("/auth/token", "/events")]
        assert served == [("POST", "/auth/token", 200), ("GET", "/events", 200)] * 3


def test_outage_keeps_port_and_state(vtn: VtnServer, lib: Lib) -> None:
    _, cap, _ = program_and_events(vtn, lib)
    ven = ven_client(vtn, lib)
    assert len(ven.events.get_events(None, None, None)) == 2
    url = vtn.url

    vtn.go_down()
    with pytest.raises(requests.ConnectionError):
        ven.events.get_events(None, None, None)
    with pytest.raises(requests.ConnectionError):  # a new client fails at its token (or discovery)
        ven_client(vtn, lib).events.get_events(None, None, None)

    vtn.come_back()
    assert vtn.url == url
    assert ven.events.get_event_by_id(cap.id) == cap  # same state, and the token still holds


def test_malformed_events_as_the_library_reads_them(vtn: VtnServer, lib: Lib) -> None:
    program, cap, _ = program_and_events(vtn, lib)
    ven = ven_client(vtn, lib)
    good = cap.model_dump(by_alias=True, mode="json", exclude={"id"})

    def raw(**changes: Any) -> str:
        return vtn.put_raw_event(good | changes)

    def payload(kind: str, values: list[Any], hours: float = 0.0) -> list[dict[str, Any]]:
        start = (datetime.now(UTC) + timedelta(hours=hours)).isoformat()
        period = {"start": start, "duration": "PT1H"}
        return [{"id": 0, "intervalPeriod": period, "payloads": [{"type": kind, "values": values}]}]

    # Accepted as they are: the VEN must check sign, type and time itself.
    negative = raw(intervals=payload("IMPORT_CAPACITY_LIMIT", [-CAP_KW]))
    unknown = raw(intervals=payload("NO_SUCH_PAYLOAD_TYPE", [1.0]))
    past = raw(intervals=payload("IMPORT_CAPACITY_LIMIT", [CAP_KW], hours=-48.0))
    assert cap_of(ven.events.get_event_by_id(negative)) == -CAP_KW
    assert (
        ven.events.get_event_by_id(unknown).intervals[0].payloads[0].type == "NO_SUCH_PAYLOAD_TYPE"
    )
    past_start = ven.events.get_event_by_id(past).intervals[0].interval_period.start
    assert past_start < datetime.now(UTC) - timedelta(hours=47)
    text = raw(intervals=payload("IMPORT_CAPACITY_LIMIT", ["5 MW"]))  # str is a payload value
    assert cap_of(ven.events.get_event_by_id(text)) == "5 MW"
    assert len(ven.events.get_events(None, None, program.id)) == 6

    # Refused: one bad event fails the whole list, and only itself when read by id.
    empty = raw(intervals=payload("IMPORT_CAPACITY_LIMIT", []))
    with pytest.raises(ValidationError):
        ven.events.get_events(None, None, program.id)
    with pytest.raises(ValidationError):
        ven.events.get_event_by_id(empty)
    assert ven.events.get_event_by_id(cap.id) == cap
    no_payloads = payload("IMPORT_CAPACITY_LIMIT", [CAP_KW])
    no_payloads[0]["payloads"] = []
    naive = payload("IMPORT_CAPACITY_LIMIT", [CAP_KW])
    naive[0]["intervalPeriod"]["start"] = "2030-01-01T00:00:00"  # no time zone
    bad_events = [
        {k: v for k, v in good.items() if k != "programID"},
        good | {"createdDateTime": "yesterday"},
        good | {"intervals": no_payloads},
        good | {"intervals": naive},
    ]
    for bad in bad_events:
        with pytest.raises(ValidationError):
            ven.events.get_event_by_id(vtn.put_raw_event(bad))
    no_intervals = vtn.put_raw_event({k: v for k, v in good.items() if k != "intervals"})
    if lib.is_301:  # required in 3.0.1, optional in 3.1.0
        with pytest.raises(ValidationError):
            ven.events.get_event_by_id(no_intervals)
    else:
        assert ven.events.get_event_by_id(no_intervals).intervals is None


class Callbacks:
    """A subscriber's webhook: records every notification and the Authorization it came with."""

    def __init__(self) -> None:
        self.received: list[tuple[str | None, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.received.append((self.headers.get("Authorization"), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def wait(self, count: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_subscription_gets_event_notifications(
    vtn: VtnServer, lib: Lib, caplog: pytest.LogCaptureFixture
) -> None:
    callbacks = Callbacks()
    try:
        bl, ven = bl_client(vtn, lib), ven_client(vtn, lib)
        program = bl.programs.create_program(
            lib.models("program.program").NewProgram(program_name="capacity")
        )
        subs = lib.models("subscriptions.subscription")

        def subscribe(url: str) -> None:
            operation = subs.ObjectOperation(
                objects=(subs.Object.EVENT,),
                operations=(subs.Operation.POST, subs.Operation.DELETE),
                callback_url=url,
                bearer_token="webhook-token",
            )
            # The library types the VEN's subscriptions read-only; its object can write.
            ven.subscriptions.create_subscription(
                subs.NewSubscription(
                    client_name="gridpilot", program_id=program.id, object_operations=(operation,)
                )
            )

        subscribe(callbacks.url)
        subscribe(f"http://127.0.0.1:{free_port()}/down")  # a dead webhook: logged only
        with caplog.at_level("WARNING", logger="gridpilot.sim.vtn"):
            cap = bl.events.create_event(
                new_event(lib, program.id, "cap", "IMPORT_CAPACITY_LIMIT", (CAP_KW,))
            )
            callbacks.wait(1)
            bl.events.delete_event_by_id(cap.id)
            callbacks.wait(2)
            deadline = time.monotonic() + 5.0
            while "notification" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.02)

        [(auth, created), (_, deleted)] = callbacks.received
        assert auth == "Bearer webhook-token"
        assert created["objectType"] == "EVENT" and created["operation"] == "POST"
        assert created["object"]["id"] == cap.id
        assert created["object"]["intervals"][0]["payloads"][0]["values"] == [CAP_KW]
        assert deleted["operation"] == "DELETE" and deleted["object"]["id"] == cap.id
        assert "notification to" in caplog.text and "failed" in caplog.text
    finally:
        callbacks.close()


def test_notifiers_say_webhooks_only(vtn: VtnServer) -> None:
    lib = LIBS[1]
    ven = ven_client(vtn, lib)
    assert ven.subscriptions.get_subscriptions(None, None, None, None) == ()
    # The library's NotifierDetails requires an MQTT member the spec leaves optional.
    with pytest.raises(ValidationError):
        ven.notifiers.get_notifiers()
    assert ("GET", "/notifiers", 200) in vtn.requests


def test_api_needs_a_bearer_token_and_pages_by_50(vtn: VtnServer) -> None:
    assert httpx.get(f"{vtn.url}/auth/server").json() == {"tokenURL": vtn.token_url}
    refused = httpx.get(f"{vtn.url}/events")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["status"] == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert (
        httpx.get(f"{vtn.url}/events", headers={"Authorization": "Bearer nope"}).status_code == 401
    )

    grant = {"grant_type": "client_credentials"}
    form = grant | {"client_id": "bl-client", "client_secret": "bl-secret"}
    token = httpx.post(vtn.token_url, data=form).json()
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600
    assert httpx.post(vtn.token_url, data=grant, auth=("bl-client", "nope")).status_code == 401
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    with httpx.Client(base_url=vtn.url, headers=headers) as api:
        for n in range(55):
            assert api.post("/programs", json={"programName": f"p{n}"}).status_code == 201
        assert len(api.get("/programs").json()) == 50
        rest = api.get("/programs", params={"skip": 50}).json()
        assert [p["programName"] for p in rest] == [f"p{n}" for n in range(50, 55)]
        assert api.get("/programs/nope").status_code == 404
        assert api.get("/nothing").status_code == 404
        assert api.get("/programs", params={"limit": "-1"}).status_code == 400
        assert api.post("/events", content=b"[]").status_code == 400
        unrouted = api.patch("/programs")
        assert unrouted.status_code == 405
        assert unrouted.headers["content-type"] == "application/problem+json"
    assert ("GET", "/programs", 200) in vtn.requests


async def test_serves_from_async_code() -> None:
    async with VtnServer(CLIENTS) as vtn, httpx.AsyncClient() as client:
        reply = await client.get(f"{vtn.url}/auth/server")
    assert reply.json() == {"tokenURL": vtn.token_url}


def test_stops_cleanly() -> None:
    server = VtnServer(CLIENTS)
    server.start()
    port = server.port
    server.stop()
    assert not any(t.name == "vtn-sim" for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
