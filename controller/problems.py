"""RFC 9457 problem documents: the one shape of every error the API answers, and how the
OpenAPI schema declares it."""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

PROBLEM = "application/problem+json"


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = Field(None, description="each field, what, bounds")


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error answers, as problem documents."""
    return {
        code: {
            "description": HTTPStatus(code).phrase,
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for code in codes
    }


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem document."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def field_errors(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors as plain JSON: the field, what is wrong, and the bound it broke."""
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")]
        item: dict[str, Any] = {"field": ".".join(loc) or None, "message": e.get("msg", "")}
        bounds = {k: v for k, v in (e.get("ctx") or {}).items() if k in ("gt", "ge", "lt", "le")}
        if bounds:
            item["bounds"] = {k: v for k, v in bounds.items() if isinstance(v, int | float)}
        value = e.get("input")
        if isinstance(value, int | float | str | bool) and not (
            isinstance(value, float) and not math.isfinite(value)
        ):
            item["value"] = value
        out.append(item)
    return out
