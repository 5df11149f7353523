"""API keys on requests: who is calling, and may they. 401 without a valid key, 403 when the
key's role may not call the endpoint; 429 when the key has made more changes than its rate
allows (the app's `per_key` buckets).

Roles: viewer < operator < admin is a ladder (each may do what those below may); `workload`
is off it, allowed only where an endpoint names it (`also`), so no endpoint lets a workload key
in unless it says so."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from controller.edge import WRITE_METHODS
from controller.opsdb import LADDER, Actor, OpsDB, Role, Rung

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or X-API-Key")


def may(role: Role, least: Rung, also: tuple[Role, ...] = ()) -> bool:
    """Whether a key of `role` may call an endpoint for `least` and above, and for `also`."""
    if role in also:
        return True
    return role in LADDER and LADDER.index(role) >= LADDER.index(least)


def requires(
    db: OpsDB, least: Rung, also: tuple[Role, ...] = ()
) -> Callable[..., Awaitable[Actor]]:
    """A FastAPI dependency: the caller's identity, if their key has at least `least` on the
    ladder, or one of the roles in `also`."""
    needs = " or ".join((f"{least} (or above)", *also)) if also else least

    async def check(request: Request) -> Actor:
        creds: HTTPAuthorizationCredentials | None = await bearer(request)
        token = creds.credentials if creds else await api_key_header(request)
        if not token:
            raise HTTPException(401, "Missing API key", headers={"WWW-Authenticate": "Bearer"})
        actor = db.verify(token)  # a primary-key read: microseconds, no thread hop needed
        if actor is None:
            raise HTTPException(401, "Invalid API key", headers={"WWW-Authenticate": "Bearer"})
        if not may(actor.role, least, also):
            raise HTTPException(403, f"This needs the {needs} role; the key is {actor.role}")
        if request.method in WRITE_METHODS:
            wait = request.app.state.per_key.take(actor.key_id or actor.name)
            if wait:
                retry = {"Retry-After": str(max(1, round(wait + 0.5)))}
                raise HTTPException(429, "Too many changes from this key", headers=retry)
        return actor

    return check
