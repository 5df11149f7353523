"""HTTP API: state and operations for operators (API keys), metrics for Prometheus, probes
for the orchestrator (no key), and the operator console (static files: the page needs no key,
every /v1 call it makes does). Every error is an RFC 9457 problem document."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.api_evidence import evidence_router
from controller.api_notices import notices_router
from controller.api_operate import operate_router
from controller.auth import requires
from controller.config import ApiLimits
from controller.console import ConsoleFiles, console_page
from controller.docs import docs_page, mount_docs_assets
from controller.edge import EdgeRules, TokenBuckets
from controller.link import ControllerLink, ControllerUnavailable, Refusal
from controller.mv import MvSettings
from controller.opsdb import Actor, OpsDB
from controller.problems import Problem, field_errors, problem, problem_responses
from controller.stream import TickEvents, TickStream

log = logging.getLogger("gridpilot.api")


def create_app(
    link: ControllerLink,
    db: OpsDB,
    data_dir: Path,
    limits: ApiLimits | None = None,
    mv: MvSettings | None = None,
) -> FastAPI:
    """The API: views and changes go to the controller through `link`; keys, the audit log
    and history are read from the SQLite file (`db`, read-only in the API's process), the
    recorder's rows and captures from `data_dir`."""
    limits = limits or ApiLimits()
    app = FastAPI(
        title="gridpilot",
        summary="Grid-interactive controller for AI data centers",
        version="0.1.0",
        responses=problem_responses(400, 408, 413, 415, 429, 431, 500, 503),
        docs_url=None,  # served below from the package's own files: no CDN
        redoc_url=None,
    )
    per_address = TokenBuckets(2 * limits.writes_per_s, 2 * limits.write_burst)
    app.add_middleware(EdgeRules, limits=limits, per_address=per_address)
    app.state.per_key = TokenBuckets(limits.writes_per_s, limits.write_burst)
    mount_docs_assets(app)
    app.mount("/ui", ConsoleFiles(), name="ui")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def console() -> FileResponse:
        return console_page()

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return docs_page(app.title)

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = f"{request.method} {request.url.path}"
        response = problem(exc.status_code, str(exc.detail), detail)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        if exc.status_code == 405:  # every method the path has, not just one route's
            methods = {
                method.upper()
                for template, operations in app.openapi()["paths"].items()
                if re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", template), request.url.path)
                for method in operations
            }
            if not methods:  # a path outside the schema (the console's page)
                methods = {
                    method
                    for route in app.routes
                    if getattr(route, "path", None) == request.url.path
                    for method in getattr(route, "methods", None) or ()
                }
            response.headers["Allow"] = ", ".join(sorted(methods))
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_problem(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(list(exc.errors()))
        return problem(422, "Invalid request", "nothing was changed", errors=errors)

    @app.exception_handler(ValidationError)
    async def model_problem(request: Request, exc: ValidationError) -> JSONResponse:
        # A change valid field by field but not as a whole (e.g. SoC band upside down).
        errors = field_errors(list(exc.errors()))
        return problem(422, "Invalid request", "nothing was changed", errors=errors)

    @app.exception_handler(Refusal)
    async def refused(request: Request, exc: Refusal) -> JSONResponse:
        extra = {"errors": exc.errors} if exc.errors is not None else {}
        return problem(exc.status, exc.title, exc.detail, **extra)

    @app.exception_handler(ControllerUnavailable)
    async def unavailable(request: Request, exc: ControllerUnavailable) -> JSONResponse:
        detail = str(exc)
        if request.method != "GET":
            detail += "; a change sent may still take effect: read it back"
        return problem(503, "Controller unavailable", detail)

    @app.exception_handler(sqlite3.DatabaseError)
    async def storage_problem(request: Request, exc: sqlite3.DatabaseError) -> JSONResponse:
        # A read of the file failed (the file failing): say so; reads change nothing.
        return problem(503, "Storage unavailable", f"{exc}; try again")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "request failed",
            exc_info=exc,
            extra={"method": request.method, "path": request.url.path},
        )
        return problem(500, "Internal error", f"{request.method} {request.url.path}")

    viewer = Depends(requires(db, "viewer"))

    @app.get(
        "/v1/state",
        summary="Latest snapshot, dispatch outputs and loop timing",
        responses={
            200: {"content": {"application/json": {"schema": {"type": "object"}}}},
            **problem_responses(401, 403),
        },
        response_class=Response,
    )
    async def get_state(_: Any = viewer) -> Response:
        # Serialised here, not by FastAPI's generic encoder: a third of each request's time.
        body = json.dumps(await link.view("state"), allow_nan=False, separators=(",", ":"))
        return Response(body, media_type="application/json")

    stream = TickStream(link, link.fresh_s, limits.max_stream_clients)
    app.state.stream = stream

    @app.get(
        "/v1/stream",
        summary="Server-sent events: a summary of each tick as it comes",
        description="Each event's data is the state of `/v1/state` without the devices' "
        "points (their stale and invalid counts instead). A client that falls 50 ticks "
        "behind is dropped. Send the key as a bearer token (e.g. fetch() with headers).",
        responses={
            200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
            **problem_responses(401, 403, 503),
        },
        response_class=TickEvents,
        status_code=200,
    )
    async def get_stream(_: Any = viewer) -> TickEvents:
        if stream.full:
            raise StarletteHTTPException(503, f"at most {limits.max_stream_clients} streams")
        return TickEvents(stream.events())

    @app.get(
        "/v1/efficiency",
        summary="PUE, tokens per joule and ERF over 1 min and 1 h; the energy since start",
        description="A ratio appears once its window is half covered. Energy in J.",
    )
    async def efficiency(_: Any = viewer) -> dict[str, Any]:
        return await link.view("efficiency")  # type: ignore[no-any-return]

    @app.get("/v1/whoami", summary="The calling key: its name and role")
    async def whoami(who: Actor = viewer) -> dict[str, Any]:
        return {"key_id": who.key_id, "name": who.name, "role": who.role}

    # Metrics and state as the loop last published them, fetched at most once a period.
    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def get_metrics() -> Response:
        return Response(await link.view("metrics"), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Ready while ticks are fresh and control is not degraded",
        responses=problem_responses(503),
    )
    async def readyz() -> Response:
        try:
            ok, reason = await link.view("ready")
        except (ControllerUnavailable, Refusal) as exc:
            ok, reason = False, str(exc)
        if ok:
            return JSONResponse({"status": "ready"})
        return problem(503, "Not ready", reason)

    @app.post(
        "/openadr/notify",
        status_code=202,
        summary="An OpenADR 3 VTN's notification: the VEN reads the VTN at once",
        description="A subscription's call back, authenticated by the bearer token the VEN gave "
        "the VTN when it subscribed (not by an API key). The body is not trusted: the VEN reads "
        "the VTN itself, as it does every `openadr.poll_s`.",
        responses=problem_responses(401, 404, 422),
    )
    async def openadr_notify(
        authorization: Annotated[str | None, Header(max_length=600)] = None,
    ) -> dict[str, Any]:
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not token:
            raise HTTPException(401, "the subscription's bearer token is needed")
        return await link.call("openadr_notify", token=token)  # type: ignore[no-any-return]

    app.include_router(operate_router(link, db, mv or MvSettings()))
    app.include_router(evidence_router(link, db, data_dir))
    app.include_router(notices_router(link, db))

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with the Problem model, and 422 as the problem document this
        app answers (not FastAPI's default shape)."""
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["Problem"] = Problem.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            for path in schema["paths"].values():
                for operation in path.values():
                    if "422" in operation.get("responses", {}):
                        operation["responses"]["422"] = problem_responses(422)[422]
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
