"""Limits at the API's edge: what one client may cost the API process. Connections are capped
(all, and per address) and must send their request head within a time; heads and bodies are
bounded in size and time; changes are rate-limited per key and per address; every answer,
even the HTTP parser's, is a problem document; every answer carries security headers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
import time
from collections import Counter
from collections.abc import Callable

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from controller.config import ApiLimits
from controller.problems import PROBLEM, problem

log = logging.getLogger("gridpilot.api.edge")
MAX_BODY_BYTES = 64 * 1024
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
LINGER_S = 1.0
SEND_BUFFER_BYTES = 64 * 1024  # the kernel's per-connection send buffer (not megabytes)
NO_STORE = [(b"cache-control", b"no-store")]


def raise_open_files_limit() -> int:
    """The soft limit on open files raised to the hard one: the connection cap, not the
    kernel, refuses a flood. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class Tally:
    """Counts of refusals by kind, logged at most every `every_s` (a flood of refusals must
    not become a flood of log lines)."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.total: Counter[str] = Counter()
        self._since: Counter[str] = Counter()
        self._every_s = every_s
        self._logged = time.monotonic()

    def add(self, kind: str) -> None:
        self.total[kind] += 1
        self._since[kind] += 1
        now = time.monotonic()
        if now - self._logged >= self._every_s:
            log.warning("API refused clients", extra={"since_last": dict(self._since)})
            self._since.clear()
            self._logged = now


def _problem_bytes(status: int, reason: bytes, title: str, detail: str) -> bytes:
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail}
    ).encode()
    head = (
        f"HTTP/1.1 {status} ".encode()
        + reason
        + b"\r\ncontent-type: "
        + PROBLEM.encode()
        + b"\r\nconnection: close\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    return head + body


def guarded_protocol(limits: ApiLimits, tally: Tally) -> type[H11Protocol]:
    """uvicorn's h11 protocol, with a connection cap and a deadline for each request head."""

    class GuardedH11(H11Protocol):
        _head_deadline: asyncio.TimerHandle | None = None  # set while a request head is due
        _discarding = False  # answered and closing: what still arrives is dropped

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:  # a client that stops reading is found out in seconds
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            host = self.client[0] if self.client else None
            same = sum(1 for c in self.connections if getattr(c, "client", None) and
                       c.client[0] == host)  # fmt: skip
            if len(self.connections) > limits.max_connections:
                self._refuse("connections", "too many connections to the API")
            elif same > limits.max_connections_per_address:
                self._refuse("connections_per_address", "too many connections from one address")
            else:
                self._arm()

        def _refuse(self, kind: str, detail: str) -> None:
            tally.add(kind)
            self.transport.write(_problem_bytes(503, b"Service Unavailable", "Busy", detail))
            self.transport.close()

        def _arm(self) -> None:
            if self._head_deadline is None:
                self._head_deadline = self.loop.call_later(
                    limits.header_timeout_s, self._head_too_slow
                )

        def _disarm(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_too_slow(self) -> None:
            self._head_deadline = None
            tally.add("header_timeout")
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(
                    _problem_bytes(
                        408,
                        b"Request Timeout",
                        "Request timeout",
                        f"the request head must arrive within {limits.header_timeout_s} s",
                    )
                )
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                return
            super().data_received(data)
            # A head still incomplete keeps (or starts) its deadline; a complete one ends it.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            buffered = len(self.conn.trailing_data[0])
            if buffered >= limits.max_header_bytes:
                tally.add("header_too_large")
                out = _problem_bytes(
                    431,
                    b"Request Header Fields Too Large",
                    "Request head too large",
                    f"request line and headers: at most {limits.max_header_bytes} bytes",
                )
            else:
                tally.add("bad_request")
                out = _problem_bytes(400, b"Bad Request", "Bad request", msg)
            self.transport.write(out)
            self._linger()

        def _linger(self) -> None:
            """Close after the answer, reading (and dropping) what the client still sends for
            a moment: closing with unread data resets the connection, and the client would
            lose the answer."""
            self._discarding = True
            with contextlib.suppress(Exception):
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

    return GuardedH11


class TokenBuckets:
    """A token bucket per name (a key, an address): `rate` per second, `burst` at once."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self._clock = rate, float(burst), clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str) -> float:
        """0 when allowed (a token taken); else the seconds until one is there."""
        now = self._clock()
        tokens, then = self._buckets.get(name, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[name] = (tokens - 1.0, now)
            if len(self._buckets) > 100_000:  # bounded: forget the full (idle) ones
                self._forget_full(now)
            return 0.0
        self._buckets[name] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}


def too_many(wait_s: float, detail: str) -> Callable[[Scope, Receive, Send], object]:
    response = problem(429, "Too many changes", detail)
    response.headers["Retry-After"] = str(max(1, round(wait_s + 0.5)))
    return response


class EdgeRules:
    """Plain ASGI (not BaseHTTPMiddleware, which re-streams every response and so cost each
    keep-alive request ~40 ms of Nagle and delayed-ACK here): header count; changes limited per
    address; bodies JSON only, at most MAX_BODY_BYTES, within the body timeout, checked before
    any handler reads them; security headers on every answer."""

    def __init__(self, app: ASGIApp, limits: ApiLimits, per_address: TokenBuckets) -> None:
        self.app, self.limits, self.per_address = app, limits, per_address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        # Live values and new keys: no cache, on the way or in the browser, keeps them.
        extra = [*SECURITY_HEADERS, *(NO_STORE if scope["path"].startswith("/v1/") else ())]

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, secured)
            return
        if scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, secured)
            return
        try:
            body = await asyncio.wait_for(self._body(receive), self.limits.body_timeout_s)
        except TimeoutError:
            detail = f"the body must arrive within {self.limits.body_timeout_s} s"
            await problem(408, "Request timeout", detail)(scope, receive, secured)
            return
        if body is None:  # the client went away
            return
        if isinstance(body, Exception):
            await problem(413, "Body too large", f"at most {MAX_BODY_BYTES} bytes")(
                scope, receive, secured
            )
            return
        headers = dict(scope["headers"])
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if body and kind != b"application/json":
            await problem(415, "Unsupported media type", "send application/json")(
                scope, receive, secured
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, secured)

    def _refusal(self, scope: Scope) -> Callable[[Scope, Receive, Send], object] | None:
        if len(scope["headers"]) > self.limits.max_headers:
            return problem(
                431, "Too many header fields", f"at most {self.limits.max_headers} fields"
            )
        if scope["method"] in WRITE_METHODS:
            client = scope.get("client")
            wait = self.per_address.take(client[0] if client else "?")
            if wait:
                return too_many(wait, "too many changes from this address; try again later")
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                return problem(413, "Body too large", f"at most {MAX_BODY_BYTES} bytes")
        return None

    @staticmethod
    async def _body(receive: Receive) -> bytes | Exception | None:
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                return OverflowError()
        return body
