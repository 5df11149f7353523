"""The VTN simulator's REST API (OpenADR 3.0.1 and 3.1.0, one router for both) and its
in-memory state; `drivers/sim/vtn.py` serves it and says what it does and what the
library does against it."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("gridpilot.sim.vtn")

Obj = dict[str, Any]

# The collections the API serves, and the objectType the VTN gives their objects.
OBJECT_TYPES = {
    "programs": "PROGRAM",
    "events": "EVENT",
    "reports": "REPORT",
    "vens": "VEN",
    "subscriptions": "SUBSCRIPTION",
    "resources": "RESOURCE",
}
# 3.1.0 has the VTN provision clientID on these (ExistingReport, ExistingVen, ExistingResource).
CLIENT_OWNED = {"reports", "vens", "resources"}
# Query parameters that select on the object's field of the same name.
FIELD_FILTERS = ("programID", "eventID", "clientName", "venName", "resourceName", "venID")
DEFAULT_LIMIT = 50  # the spec's default page size
START_TIMEOUT_S = 10.0
# Fields a client cannot set by a PUT.
PROVISIONED = {"id", "createdDateTime", "modificationDateTime", "objectType", "clientID"}
MAX_RECORDED = 10_000  # requests kept for tests; a demo VTN runs for hours


def now_iso(after: str | None = None) -> str:
    """The time now as the spec writes it (UTC, milliseconds); later than `after` when given, so
    an update always changes modificationDateTime even within one millisecond."""
    now = datetime.now(UTC)
    with contextlib.suppress(TypeError, ValueError):  # a raw event's time may be anything
        now = max(now, datetime.fromisoformat(str(after)) + timedelta(milliseconds=1))
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def problem(exc: StarletteHTTPException) -> JSONResponse:
    """The spec's Problem object (RFC 7807) for an HTTP error."""
    status = exc.status_code
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    return JSONResponse(
        body | {"detail": str(exc.detail)},
        status_code=status,
        headers=exc.headers,
        media_type="application/problem+json",
    )


@dataclass
class VtnState:
    """Everything the VTN knows; kept across go_down/come_back. Guarded by `lock`: handlers run
    on the server's thread, tests read and write from theirs."""

    clients: dict[str, str]
    token_ttl_s: float
    refuse_tokens: bool = False
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # token: (client, expiry)
    store: dict[str, dict[str, Obj]] = field(default_factory=lambda: {k: {} for k in OBJECT_TYPES})
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue_token(self, client_id: str) -> str:
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = (client_id, time.monotonic() + self.token_ttl_s)
        return token

    def client_of(self, token: str) -> str | None:
        """The client a token was issued to, None when unknown or expired."""
        with self.lock:
            client, expiry = self.tokens.get(token, ("", 0.0))
        return client if client and time.monotonic() < expiry else None

    def add(self, kind: str, body: Obj, client: str | None) -> Obj:
        """Store a new object, with the fields the VTN provisions."""
        created = now_iso()
        obj = {**body, "id": str(uuid.uuid4()), "createdDateTime": created}
        obj |= {"modificationDateTime": created, "objectType": OBJECT_TYPES[kind]}
        if kind in CLIENT_OWNED and client is not None:
            # A report is always its poster's; a BL client names the VEN's client itself.
            obj["clientID"] = client if kind == "reports" else body.get("clientID") or client
        with self.lock:
            self.store[kind][obj["id"]] = obj
        return obj

    def get(self, kind: str, obj_id: str) -> Obj | None:
        with self.lock:
            return self.store[kind].get(obj_id)

    def update(self, kind: str, obj_id: str, body: Obj) -> Obj | None:
        with self.lock:
            old = self.store[kind].get(obj_id)
            if old is None:
                return None
            given = {k: v for k, v in body.items() if v is not None and k not in PROVISIONED}
            new = old | given | {"modificationDateTime": now_iso(old["modificationDateTime"])}
            self.store[kind][obj_id] = new
            return new

    def delete(self, kind: str, obj_id: str) -> Obj | None:
        with self.lock:
            return self.store[kind].pop(obj_id, None)

    def all(self, kind: str) -> list[Obj]:
        with self.lock:
            return list(self.store[kind].values())


def targets_match(obj: Obj, names: list[str], target_type: str | None, values: list[str]) -> bool:
    """3.1.0: every target named is in the object's targets (strings). 3.0.1: one of the
    object's targets has the type and one of the values."""
    targets = obj.get("targets") or []
    if names and not set(names) <= {t for t in targets if isinstance(t, str)}:
        return False
    if target_type is None:
        return True
    return any(
        isinstance(t, dict)
        and t.get("type") == target_type
        and set(t.get("values", [])) & set(values)
        for t in targets
    )


def count(text: str | None, default: int) -> int:
    """A skip or limit: a non-negative integer, 400 otherwise."""
    if text is None:
        return default
    if not text.isdigit():
        raise HTTPException(400, f"not a non-negative integer: {text!r}")
    return int(text)


def select(objs: Iterable[Obj], request: Request) -> list[Obj]:
    """The objects a list request asks for: its filters, then skip and limit."""
    q = request.query_params
    chosen = [
        o
        for o in objs
        if all(o.get(f) == q[f] for f in FIELD_FILTERS if f in q)
        and targets_match(o, q.getlist("targets"), q.get("targetType"), q.getlist("targetValues"))
    ]
    skip, limit = count(q.get("skip"), 0), count(q.get("limit"), DEFAULT_LIMIT)
    return chosen[skip : skip + limit]


def subscribed(sub: Obj, obj: Obj, operation: str) -> list[Obj]:
    """The objectOperations of a subscription that ask for this object and operation."""
    program = obj["id"] if obj.get("objectType") == "PROGRAM" else obj.get("programID")
    if sub.get("programID") and sub["programID"] != program:
        return []
    return [
        op
        for op in sub.get("objectOperations") or []
        if obj.get("objectType") in op.get("objects", []) and operation in op.get("operations", [])
    ]


class Notifier:
    """Sends subscriptions' notifications in the background: a callback that is slow or down must
    not hold up the request that caused it."""

    def __init__(self, state: VtnState) -> None:
        self.state = state
        self.tasks: set[asyncio.Task[None]] = set()  # held so they are not collected mid-flight

    def notify(self, obj: Obj, operation: str) -> None:
        for sub in self.state.all("subscriptions"):
            for op in subscribed(sub, obj, operation):
                body = {"objectType": obj["objectType"], "operation": operation, "object": obj}
                task = asyncio.create_task(
                    self.send(op["callbackUrl"], op.get("bearerToken"), body)
                )
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def send(self, url: str, token: str | None, body: Obj) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                reply = await client.post(url, json=body, headers=headers)
            log.info(
                "notified %s: %s %s -> %d",
                url,
                body["operation"],
                body["objectType"],
                reply.status_code,
            )
        except httpx.HTTPError as exc:
            log.warning("notification to %s failed: %r", url, exc)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(client id, secret) from an HTTP Basic Authorization header."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


def bearer_client(state: VtnState, request: Request) -> str:
    """The client whose valid token the request bears; 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    client = state.client_of(token) if scheme.lower() == "bearer" else None
    if client is None:
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}  # RFC 6750
        raise HTTPException(401, "missing, unknown or expired bearer token", challenge)
    return client


def collection(kind: str) -> str:
    if kind not in OBJECT_TYPES:
        raise HTTPException(404, f"no such collection: {kind}")
    return kind


def found(obj: Obj | None, kind: str, obj_id: str) -> Obj:
    if obj is None:
        raise HTTPException(404, f"{kind}/{obj_id} not found")
    return obj


def build_app(state: VtnState) -> FastAPI:
    """The VTN's HTTP API over `state`."""
    app = FastAPI(title="gridpilot VTN simulator", docs_url=None, redoc_url=None)
    notifier = Notifier(state)

    @app.middleware("http")
    async def record(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        with state.lock:
            state.requests.append((request.method, request.url.path, response.status_code))
            del state.requests[:-MAX_RECORDED]
        return response

    # Starlette's class, so the router's own 404 and 405 are problems too.
    @app.exception_handler(StarletteHTTPException)
    async def http_problem(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc)

    @app.post("/auth/token")
    async def token(request: Request) -> JSONResponse:
        # The form by hand: FastAPI's form parsing needs python-multipart, not a dependency.
        form = dict(parse_qsl((await request.body()).decode(errors="replace")))
        creds = basic_credentials(request.headers.get("authorization"))
        client_id, secret = creds or (form.get("client_id", ""), form.get("client_secret", ""))
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        known = state.clients.get(client_id)
        if state.refuse_tokens or known is None or not secrets.compare_digest(known, secret):
            log.warning("token refused to %r", client_id)
            challenge = {"WWW-Authenticate": 'Basic realm="vtn"'}  # RFC 6749 5.2
            return JSONResponse({"error": "invalid_client"}, status_code=401, headers=challenge)
        expires_in = math.ceil(state.token_ttl_s)
        body = {"access_token": state.issue_token(client_id), "token_type": "Bearer"}
        no_store = {"Cache-Control": "no-store"}
        return JSONResponse(body | {"expires_in": expires_in}, headers=no_store)

    @app.get("/auth/server")
    async def auth_server(request: Request) -> dict[str, str]:
        return {"tokenURL": f"{str(request.base_url).rstrip('/')}/auth/token"}

    @app.get("/notifiers")
    async def notifiers(request: Request) -> Obj:
        # 3.1.0: webhooks only; the spec's MQTT member is optional and there is no broker here.
        bearer_client(state, request)
        return {"WEBHOOK": True}

    @app.get("/vens/{ven_id}/resources")
    async def list_ven_resources(ven_id: str, request: Request) -> list[Obj]:
        bearer_client(state, request)
        return select((r for r in state.all("resources") if r.get("venID") == ven_id), request)

    @app.post("/vens/{ven_id}/resources", status_code=201)
    async def create_ven_resource(ven_id: str, request: Request) -> Obj:
        return await create("resources", request, {"venID": ven_id})

    @app.api_route("/vens/{ven_id}/resources/{obj_id}", methods=["GET", "PUT", "DELETE"])
    async def ven_resource(ven_id: str, obj_id: str, request: Request) -> Obj:
        bearer_client(state, request)
        resource = found(state.get("resources", obj_id), "resources", obj_id)
        if resource.get("venID") != ven_id:  # another VEN's resource is not under this one
            raise HTTPException(404, f"vens/{ven_id}/resources/{obj_id} not found")
        return await one("resources", obj_id, request)

    @app.get("/{kind}")
    async def list_objects(kind: str, request: Request) -> list[Obj]:
        bearer_client(state, request)
        return select(state.all(collection(kind)), request)

    @app.post("/{kind}", status_code=201)
    async def create_object(kind: str, request: Request) -> Obj:
        return await create(collection(kind), request, {})

    @app.api_route("/{kind}/{obj_id}", methods=["GET", "PUT", "DELETE"])
    async def object_by_id(kind: str, obj_id: str, request: Request) -> Obj:
        return await one(collection(kind), obj_id, request)

    async def create(kind: str, request: Request, fixed: Obj) -> Obj:
        client = bearer_client(state, request)
        body = await json_object(request)
        obj = state.add(kind, body | fixed, client)
        log.info("%s created %s %s", client, OBJECT_TYPES[kind], obj["id"])
        notifier.notify(obj, "POST")
        return obj

    async def one(kind: str, obj_id: str, request: Request) -> Obj:
        client = bearer_client(state, request)
        if request.method == "GET":
            return found(state.get(kind, obj_id), kind, obj_id)
        if request.method == "PUT":
            obj = found(state.update(kind, obj_id, await json_object(request)), kind, obj_id)
        else:
            obj = found(state.delete(kind, obj_id), kind, obj_id)
        log.info("%s %s %s %s", client, request.method, OBJECT_TYPES[kind], obj_id)
        notifier.notify(obj, request.method)
        return obj

    return app


async def json_object(request: Request) -> Obj:
    """The request's JSON body, which must be an object."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body
