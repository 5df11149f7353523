"""API keys on requests: who is calling, and may they. 401 without a valid key, 403 when the
key's role is below what the endpoint needs (viewer < operator < admin); 429 when the key has
made more changes than its rate allows (the app's `per_key` buckets)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from controller.edge import WRITE_METHODS
from controller.opsdb import ROLES, Actor, OpsDB, Role

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or X-API-Key")


def requires(db: OpsDB, role: Role) -> Callable[..., Awaitable[Actor]]:
    """A FastAPI dependency: the caller's identity, if their key has at least `role`."""

    async def check(request: Request) -> Actor:
        creds: HTTPAuthorizationCredentials | None = await bearer(request)
        token = creds.credentials if creds else await api_key_header(request)
        if not token:
            raise HTTPException(401, "Missing API key", headers={"WWW-Authenticate": "Bearer"})
        actor = db.verify(token)  # a primary-key read: microseconds, no thread hop needed
        if actor is None:
            raise HTTPException(401, "Invalid API key", headers={"WWW-Authenticate": "Bearer"})
        if ROLES.index(actor.role) < ROLES.index(role):
            raise HTTPException(403, f"This needs the {role} role; the key is {actor.role}")
        if request.method in WRITE_METHODS:
            wait = request.app.state.per_key.take(actor.key_id or actor.name)
            if wait:
                retry = {"Retry-After": str(max(1, round(wait + 0.5)))}
                raise HTTPException(429, "Too many changes from this key", headers=retry)
        return actor

    return check
