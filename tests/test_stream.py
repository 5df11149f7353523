"""The tick stream (`GET /v1/stream`) against a live controller: every client gets each tick,
and a client that stops reading is dropped, not buffered for."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx

from controller.cli_common import CLI
from controller.config import SiteConfig
from tests.plant import Running, site_running


async def ticks_of(run: Running, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with run.api.stream("GET", "/v1/stream", timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
                if len(events) == count:
                    return events
    raise AssertionError("the stream ended")


async def test_every_client_gets_each_tick_as_the_state_shows_it(site: SiteConfig):
    async with site_running(site) as run:
        streams = await asyncio.wait_for(
            asyncio.gather(*(ticks_of(run, 10) for _ in range(20))), 20
        )
        for events in streams:
            seqs = [e["tick"]["seq"] for e in events]
            assert seqs == sorted(set(seqs)), seqs  # in order, each once
            assert seqs[-1] - seqs[0] <= 3 * len(seqs)  # hardly a tick missed
        event = streams[0][-1]
        assert {"measurements", "dispatch", "in_force", "mode", "devices"} <= set(event)
        ups = event["devices"]["ups-a"]
        assert ups["connected"] and ups["stale_points"] == 0 and "points" not in ups
        state = (await run.api.get("/v1/state")).json()
        assert state["tick"]["seq"] >= event["tick"]["seq"]
        assert set(state["devices"]) == set(event["devices"])
        viewer = run.controller.db.create_key("stream-viewer", "viewer", CLI)[1]
        r = await run.api.get("/v1/whoami", headers={"Authorization": f"Bearer {viewer}"})
        assert r.json() == {
            "key_id": viewer.split("_")[1],
            "name": "stream-viewer",
            "role": "viewer",
        }
        unauthenticated = await run.api.get("/v1/stream", headers={"Authorization": ""})
        assert unauthenticated.status_code == 401


async def test_a_client_that_stops_reading_is_dropped(site: SiteConfig):
    async with site_running(site) as run:
        key = run.api.headers["Authorization"]
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills in seconds
        stalled.connect(("127.0.0.1", site.api_port))
        request = f"GET /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n\r\n"
        stalled.sendall(request.encode())
        # It reads nothing while the stream goes on for others. The kernel's buffers take a
        # few hundred kB first (here ~15 s of ticks), then its queue fills (5 s): dropped.
        started = time.monotonic()
        others = await ticks_of(run, 50)  # meanwhile a client that reads gets every tick
        assert len(others) == 50
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - started)))
        stalled.setblocking(False)
        loop = asyncio.get_running_loop()
        received, closed, deadline = 0, False, time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(stalled, 65536), 2)
            except TimeoutError:
                continue
            if not chunk:
                closed = True
                break
            received += len(chunk)
        stalled.close()
        # What it was sent is bounded (its socket buffers, and at most 50 ticks queued),
        # and then the server closed the connection.
        assert closed, f"still streaming after {received} bytes"
        assert received < 2_000_000
        async with httpx.AsyncClient(base_url=str(run.api.base_url)) as fresh:
            assert (await fresh.get("/healthz")).status_code == 200


async def test_efficiency_shows_the_energy_since_start(site: SiteConfig):
    async with site_running(site) as run:
        deadline = time.monotonic() + 10
        while True:  # the account counts from the first tick with every power known
            body = (await run.api.get("/v1/efficiency")).json()
            if body["energy_j"]["it"] > 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        energy = body["energy_j"]
        assert energy["it"] > 0 and energy["facility"] >= energy["it"]
        assert body["tokens"] >= 0
