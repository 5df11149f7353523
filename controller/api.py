"""HTTP API: state and operations for operators (API keys), metrics for Prometheus, probes
for the orchestrator (no key). Every error is an RFC 9457 problem document."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.alarms import AlarmBook
from controller.api_operate import operate_router
from controller.auth import requires
from controller.config import DeviceConfig
from controller.metrics import Metrics
from controller.operations import Operations
from controller.opsdb import Conflict, OpsDB
from controller.problems import Problem, field_errors, problem, problem_responses
from controller.state import SiteState
from drivers.devicemap import DeviceMap

MAX_BODY_BYTES = 64 * 1024


class BodyRules:
    """Bodies: JSON only, and at most MAX_BODY_BYTES, checked before any handler reads them.
    Plain ASGI (not BaseHTTPMiddleware, which re-streams every response and so cost each
    keep-alive request ~40 ms of Nagle and delayed-ACK here)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        too_big = problem(413, "Body too large", f"at most {MAX_BODY_BYTES} bytes")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            await too_big(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                await too_big(scope, receive, send)
                return
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if body and kind != b"application/json":
            await problem(415, "Unsupported media type", "send application/json")(
                scope, receive, send
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(
    state: SiteState,
    metrics: Metrics,
    ops: Operations,
    db: OpsDB,
    alarms: AlarmBook,
    configs: Mapping[str, DeviceConfig],
    maps: Mapping[str, DeviceMap],
) -> FastAPI:
    app = FastAPI(
        title="gridpilot",
        summary="Grid-interactive controller for AI data centers",
        version="0.1.0",
        responses=problem_responses(400, 413, 415, 500, 503),
    )

    app.add_middleware(BodyRules)

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

    @app.exception_handler(Conflict)
    async def conflict_problem(request: Request, exc: Conflict) -> JSONResponse:
        return problem(409, "Conflict", f"{exc}; nothing was changed")

    @app.exception_handler(sqlite3.DatabaseError)
    async def storage_problem(request: Request, exc: sqlite3.DatabaseError) -> JSONResponse:
        # The file refused a change (locked by another process past the busy timeout, full,
        # failing): it was rolled back whole and memory left as it was, so it may be retried.
        return problem(503, "Storage unavailable", f"{exc}; nothing was changed, try again")

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
        body = json.dumps(state.to_json(), allow_nan=False, separators=(",", ":"))
        return Response(body, media_type="application/json")

    # The API has its own thread: metrics and state are read as the loop last published them.
    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def get_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Ready while ticks are fresh and control is not degraded",
        responses=problem_responses(503),
    )
    async def readyz() -> Response:
        ok, reason = state.ready()
        if ok:
            return JSONResponse({"status": "ready"})
        return problem(503, "Not ready", reason)

    app.include_router(operate_router(ops, db, state, alarms, configs, maps))

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
