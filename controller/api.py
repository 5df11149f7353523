"""HTTP API: state for operators, metrics for Prometheus, probes for the orchestrator."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.metrics import Metrics
from controller.state import SiteState

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem document."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def create_app(state: SiteState, metrics: Metrics) -> FastAPI:
    app = FastAPI(
        title="gridpilot",
        summary="Grid-interactive controller for AI data centers",
        version="0.1.0",
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), f"{request.method} {request.url.path}")

    @app.exception_handler(RequestValidationError)
    async def validation_problem(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, "Invalid request", "see errors", errors=exc.errors())

    @app.get("/v1/state", summary="Latest snapshot, dispatch outputs and loop timing")
    async def get_state() -> dict[str, Any]:
        return state.to_json()

    # Async on purpose: the scrape runs on the loop's thread and so reads a consistent tick.
    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def get_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready while ticks are fresh and control is not degraded")
    async def readyz() -> Response:
        ok, reason = state.ready()
        if ok:
            return JSONResponse({"status": "ready"})
        return problem(503, "Not ready", reason)

    return app
