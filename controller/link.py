"""The API's end of the channel to the controller. Reads of the controller's views are shared:
within one loop period, every request for a view gets the same answer, fetched once, so a
flood of GETs costs the controller at most one view per period. A change is sent as a command
and answered with the controller's result, or its refusal as a problem."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

from controller.channel import (
    HEADER,
    MAX_REPLY_BYTES,
    VIEWS,
    ChannelClosed,
    decode,
    encode,
    read_frame,
)


class ControllerUnavailable(Exception):
    """No answer from the controller in time (or its process is gone)."""


class Refusal(Exception):
    """The controller refused a request: a problem document's fields."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(reply.get("detail", ""))
        self.status = int(reply.get("status", 500))
        self.title = str(reply.get("title", "Error"))
        self.detail = str(reply.get("detail", ""))
        self.errors = reply.get("errors")


class ControllerLink:
    """Requests and answers; how a message travels is the subclass's."""

    def __init__(self, timeout_s: float, fresh_s: float) -> None:
        self.timeout_s = timeout_s
        self.fresh_s = fresh_s  # a view this young is served again (one loop period)
        self._views: dict[str, tuple[float, asyncio.Future[Any]]] = {}

    async def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    async def call(self, op: str, **args: Any) -> Any:
        """Run `op` on the controller; its value, or Refusal / ControllerUnavailable."""
        if op not in VIEWS:
            self._views.clear()  # a change: the next read shows it
        try:
            reply = await asyncio.wait_for(self._exchange({"op": op, "args": args}), self.timeout_s)
        except TimeoutError:
            raise ControllerUnavailable(
                f"the controller did not answer {op} within {self.timeout_s} s"
            ) from None
        if not reply.get("ok"):
            raise Refusal(reply)
        return reply.get("value")

    async def view(self, name: str) -> Any:
        """A view of the controller's state, shared by every request within `fresh_s`."""
        now = time.monotonic()
        cached = self._views.get(name)
        if cached is not None and now - cached[0] < self.fresh_s:
            return await asyncio.shield(cached[1])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._views[name] = (now, future)
        try:
            future.set_result(await self.call(name))
        except Exception as exc:
            self._views.pop(name, None)  # a failure is not kept: the next request asks again
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when none waits
            raise
        return future.result()

    async def close(self) -> None:
        return None


class SocketLink(ControllerLink):
    """Over the Unix socket the controller handed the API process."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout_s: float,
        fresh_s: float,
        on_closed: Callable[[], None],
    ) -> None:
        super().__init__(timeout_s, fresh_s)
        self._reader, self._writer = reader, writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._on_closed = on_closed
        self._replies = asyncio.create_task(self._read_replies(), name="controller-replies")

    async def _read_replies(self) -> None:
        try:
            while True:
                reply = await read_frame(self._reader, MAX_REPLY_BYTES)
                waiter = self._waiting.pop(reply.get("id"), None)  # type: ignore[arg-type]
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
        except (ChannelClosed, ConnectionError, ValueError):
            pass
        finally:
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(ControllerUnavailable("the controller went away"))
            self._waiting.clear()
            self._on_closed()

    async def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._replies.done():
            raise ControllerUnavailable("the controller went away")
        request_id = next(self._ids)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        try:
            self._writer.write(encode({"id": request_id, **message}))
            await self._writer.drain()
            return await waiter
        finally:
            self._waiting.pop(request_id, None)  # answered, or given up on (a late answer drops)

    async def close(self) -> None:
        self._replies.cancel()
        with contextlib.suppress(BaseException):
            await self._replies
        self._writer.close()


class InProcessLink(ControllerLink):
    """The same requests, through the same JSON, to a bridge in this process: for running the
    API inside the controller's process (tests that need no process of their own)."""

    def __init__(self, handle: Callable[[dict[str, Any]], dict[str, Any]], fresh_s: float) -> None:
        super().__init__(timeout_s=30.0, fresh_s=fresh_s)
        self._handle = handle

    async def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        wire = decode(encode(message)[HEADER.size :])  # as the channel would carry it
        reply = await asyncio.to_thread(self._handle, wire)
        return decode(encode(reply)[HEADER.size :])
