"""HTTP API: state and operations for operators (API keys), metrics for Prometheus, probes
for the orchestrator (no key). Every error is an RFC 9457 problem document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.api_operate import operate_router
from controller.auth import requires
from controller.config import DeviceConfig
from controller.metrics import Metrics
from controller.operations import Operations
from controller.opsdb import OpsDB
from controller.problems import Problem, field_errors, problem, problem_responses
from controller.state import SiteState
from drivers.base import DeviceDriver

MAX_BODY_BYTES = 64 * 1024


def create_app(
    state: SiteState,
    metrics: Metrics,
    ops: Operations,
    db: OpsDB,
    drivers: Mapping[str, DeviceDriver],
    configs: Mapping[str, DeviceConfig],
) -> FastAPI:
    app = FastAPI(
        title="gridpilot",
        summary="Grid-interactive controller for AI data centers",
        version="0.1.0",
        responses=problem_responses(400, 413, 415, 500),
    )

    @app.middleware("http")
    async def body_rules(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Bodies: JSON only, and small; checked before anything reads them."""
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                return problem(413, "Body too large", f"at most {MAX_BODY_BYTES} bytes")
            body = await request.body()  # cached: the handler reads the same bytes
            if len(body) > MAX_BODY_BYTES:
                return problem(413, "Body too large", f"at most {MAX_BODY_BYTES} bytes")
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if body and kind != "application/json":
                return problem(415, "Unsupported media type", "send application/json")
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = f"{request.method} {request.url.path}"
        response = problem(exc.status_code, str(exc.detail), detail)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        if exc.status_code == 405:  # every method the path has, not just one route's
            methods = {
                m
                for r in app.routes
                if isinstance(r, APIRoute) and r.path_regex.match(request.url.path)
                for m in r.methods
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

    viewer = Depends(requires(db, "viewer"))

    @app.get(
        "/v1/state",
        summary="Latest snapshot, dispatch outputs and loop timing",
        responses=problem_responses(401, 403),
    )
    async def get_state(_: Any = viewer) -> dict[str, Any]:
        return state.to_json()

    # Async on purpose: the scrape runs on the loop's thread and so reads a consistent tick.
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

    app.include_router(operate_router(ops, db, drivers, configs))

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
