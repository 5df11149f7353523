"""The narrow channel between the API process and the controller: JSON frames, each behind a
4-byte length, over one Unix socket pair. The API asks (`{"id", "op", "args"}`), the controller
answers (`{"id", "ok", "value"}` or `{"id", "ok": false, "status", "title", "detail"}`), one
request at a time. Frames are bounded both ways, so neither side can make the other buffer more
than the limit."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

HEADER = struct.Struct("!I")
MAX_REQUEST_BYTES = 256 * 1024  # a request carries at most one checked body (64 KiB)
MAX_REPLY_BYTES = 16 * 1024 * 1024  # the metrics text of a large site
# What the API may read of the controller (the rest of the bridge's table are commands).
VIEWS = frozenset(
    {"state", "ready", "devices", "setpoints", "mode", "alarms", "metrics", "efficiency"}
)


class ChannelClosed(Exception):
    """The other end went away (its process stopped)."""


class FrameTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a frame of {size} bytes; at most {limit}")


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
    return HEADER.pack(len(data)) + data


def decode(data: bytes) -> dict[str, Any]:
    """A frame's body as the message it holds: a JSON object, or ValueError."""
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("a frame must hold a JSON object")
    return message


def _size(header: bytes, limit: int) -> int:
    (size,) = HEADER.unpack(header)
    if size > limit:
        raise FrameTooLarge(size, limit)
    return size


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ChannelClosed("the API process closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, limit: int) -> dict[str, Any]:
    """The next message (blocking); ChannelClosed at the end, FrameTooLarge over `limit`."""
    size = _size(_recv_exactly(sock, HEADER.size), limit)
    return decode(_recv_exactly(sock, size))


async def read_frame(reader: asyncio.StreamReader, limit: int) -> dict[str, Any]:
    try:
        size = _size(await reader.readexactly(HEADER.size), limit)
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ChannelClosed("the controller closed the channel") from None
    return decode(body)
