"""The tick stream (`GET /v1/stream`, server-sent events) in the API's process: one task
fetches the controller's state view once a loop period, while anyone listens, and hands each
new tick's summary to every client's own bounded queue. A client that stops reading fills its
queue and is dropped: nothing is buffered for it beyond the queue, and no client can hold back
another, the task or the loop."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from controller.link import ControllerLink, ControllerUnavailable, Refusal

log = logging.getLogger("gridpilot.api.stream")
QUEUE_TICKS = 50  # a client may fall this many ticks behind (5 s at 100 ms), then it is dropped
HEARTBEAT_S = 5.0  # a comment line while no tick comes (e.g. the controller is busy)
SEND_TIMEOUT_S = 10.0  # a client whose socket takes nothing for this long is dropped


def summary(state: dict[str, Any]) -> dict[str, Any]:
    """A tick as the console shows it: the state without each device's points, with counts of
    the stale and invalid ones instead."""
    devices = {
        device_id: {
            "kind": dev["kind"],
            "connected": dev["connected"],
            "last_error": dev["last_error"],
            "stale_points": sum(1 for p in dev["points"].values() if p["stale"]),
            "invalid_points": sum(1 for p in dev["points"].values() if not p["valid"]),
        }
        for device_id, dev in state.get("devices", {}).items()
    }
    return {**{k: v for k, v in state.items() if k != "devices"}, "devices": devices}


class _Client:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_TICKS)
        self.dropped = asyncio.Event()


class TickStream:
    def __init__(self, link: ControllerLink, period_s: float, max_clients: int) -> None:
        self.link, self.period_s, self.max_clients = link, period_s, max_clients
        self._clients: set[_Client] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def full(self) -> bool:
        return len(self._clients) >= self.max_clients

    async def events(self) -> AsyncIterator[str]:
        """One client's server-sent events, until it goes away or is dropped."""
        client = _Client()
        self._clients.add(client)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._fetch(), name="tick-stream")
        try:
            yield "retry: 2000\n\n"
            while not client.dropped.is_set():
                get = asyncio.ensure_future(client.queue.get())
                dropped = asyncio.ensure_future(client.dropped.wait())
                done, pending = await asyncio.wait(
                    {get, dropped}, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in pending:
                    waiter.cancel()
                if get in done:
                    yield get.result()
                elif not done:
                    yield ": waiting for ticks\n\n"
        finally:
            self._clients.discard(client)

    async def _fetch(self) -> None:
        """While anyone listens: each new tick, once, to every client's queue."""
        last_seq = None
        while self._clients:
            try:
                state = await self.link.view("state")
            except (ControllerUnavailable, Refusal) as exc:
                log.warning("stream: no state", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
                continue
            tick = state.get("tick") or {}
            if tick.get("seq") != last_seq:
                last_seq = tick.get("seq")
                event = "data: " + json.dumps(summary(state), separators=(",", ":")) + "\n\n"
                for client in list(self._clients):
                    try:
                        client.queue.put_nowait(event)
                    except asyncio.QueueFull:  # it stopped reading: dropped, not buffered
                        client.dropped.set()
                        self._clients.discard(client)
                        log.info("stream client dropped: it stopped reading")
            await asyncio.sleep(self.period_s / 2)

    def end_all(self) -> None:
        """End every client's events (the server is stopping)."""
        for client in self._clients:
            client.dropped.set()
        self._clients.clear()


class TickEvents(Response):
    """The stream's HTTP answer. Each event's send has a deadline: a client that takes
    nothing is dropped (its connection closed) rather than awaited for ever; a client that
    goes away ends its events at once."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str]) -> None:
        super().__init__(headers={"X-Accel-Buffering": "no", "Cache-Control": "no-store"})
        # Open-ended: no content-length (which Response gives an empty body).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for event in self.events:
                if gone.is_set():
                    return
                body = {"type": "http.response.body", "body": event.encode(), "more_body": True}
                await asyncio.wait_for(send(body), SEND_TIMEOUT_S)
        except TimeoutError:
            log.info("stream client dropped: its connection took nothing for a while")
        finally:
            watcher.cancel()
            await self.events.aclose()  # type: ignore[attr-defined]
