"""The API in a process of its own. HTTP parsing, TLS, slow and abusive clients, JSON
encoding: all of it costs this process's interpreter, never the control loop's. It reaches
the controller through one bounded channel (`controller.channel`): views of the latest
record out, checked commands in, one at a time. It reads keys, the audit log and histories
from the SQLite file on a read-only connection, and writes nothing itself.

The controller starts it (spawned: a fresh interpreter, nothing inherited but the channel),
watches it and starts it anew if it dies; it ends when the channel closes (the controller
stopped or died). It runs at a lower scheduling priority than the controller."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from controller.bridge import Bridge
from controller.channel import MAX_REQUEST_BYTES, encode, recv_frame
from controller.config import ApiLimits
from controller.edge import Tally, guarded_protocol, raise_open_files_limit
from controller.link import SocketLink
from controller.logs import setup_logging
from controller.mv import MvSettings

log = logging.getLogger("gridpilot.api")
NICE = 10  # below the controller: on a busy host the loop gets the CPU first
START_TIMEOUT_S = 60.0  # a fresh interpreter imports FastAPI and friends first
STOP_TIMEOUT_S = 5.0
BACKLOG = 2048


@dataclass(frozen=True)
class ApiSpec:
    """All the API process is told: where to listen, the file to read, its limits."""

    host: str
    port: int
    db_path: Path
    data_dir: Path  # the recorder's rows and the captures, read here
    period_s: float  # views are fetched at most once a loop period
    limits: ApiLimits
    tls: tuple[Path, Path] | None  # HTTPS: (certificate chain, private key), PEM
    log_level: str
    mv: MvSettings  # how demand-response events are measured

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"


def listen(host: str, port: int) -> socket.socket:
    """The API's listening socket, with a clear error when the address is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: a response's head and body leave at once, instead
    # of the body waiting ~40 ms for the client's delayed ACK on keep-alive requests.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(BACKLOG)  # connections wait in the backlog until the server accepts them
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the channel's end is this process's end."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(spec: ApiSpec, channel: socket.socket) -> None:
    """The API process's entry point."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the controller, which stops us
    with contextlib.suppress(OSError):
        os.nice(NICE)
    setup_logging(spec.log_level)
    # uvicorn warns once per malformed request: under a flood, a flood of lines. The edge's
    # tally counts them and logs the counts instead.
    logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
    asyncio.run(_serve(spec, channel))


async def _serve(spec: ApiSpec, channel: socket.socket) -> None:
    from controller.api import create_app  # here: the controller's process never needs it
    from controller.opsdb import OpsDB

    reader, writer = await asyncio.open_unix_connection(sock=channel)
    try:
        sock = listen(spec.host, spec.port)
    except OSError as exc:
        writer.write(encode({"id": 0, "error": str(exc)}))
        await writer.drain()
        return
    open_files = raise_open_files_limit()
    writer.write(encode({"id": 0, "listening": spec.url}))
    await writer.drain()
    limits, tally = spec.limits, Tally()
    server: _Server | None = None

    def controller_gone() -> None:
        app.state.stream.end_all()  # streams end now, not cut off at the shutdown's deadline
        if server is not None:
            server.should_exit = True

    link = SocketLink(reader, writer, limits.controller_timeout_s, spec.period_s, controller_gone)
    db = OpsDB(spec.db_path, read_only=True)
    app = create_app(link, db, spec.data_dir, limits, spec.mv)
    config = uvicorn.Config(
        app,
        http=guarded_protocol(limits, tally),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=int(max(1, round(limits.keep_alive_s))),
        ssl_certfile=spec.tls[0] if spec.tls else None,
        ssl_keyfile=spec.tls[1] if spec.tls else None,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=1,  # the controller is stopping: no request waits long
    )
    server = _Server(config)
    log.info("API serving", extra={"url": spec.url, "pid": os.getpid(), "open_files": open_files})
    try:
        await server.serve(sockets=[sock])
    finally:
        await link.close()
        db.close()
        sock.close()


class ApiProcess:
    """The controller's handle on the API process: started, watched, started anew if it dies,
    stopped with the controller. The bridge answers its requests on a thread of its own."""

    def __init__(self, spec: ApiSpec, bridge: Bridge) -> None:
        self.spec, self.bridge = spec, bridge
        self._process: multiprocessing.process.BaseProcess | None = None
        self._channel: socket.socket | None = None

    def start(self) -> None:
        """Start the process and wait until it listens; OSError if it cannot."""
        ours, theirs = socket.socketpair()
        process = multiprocessing.get_context("spawn").Process(
            target=serve, args=(self.spec, theirs), name="gridpilot-api", daemon=True
        )
        process.start()
        theirs.close()
        ours.settimeout(START_TIMEOUT_S)
        try:
            hello = recv_frame(ours, MAX_REQUEST_BYTES)
        except Exception as exc:
            ours.close()
            process.kill()
            raise OSError(f"the API process did not start: {exc}") from None
        if "error" in hello:
            ours.close()
            process.join(STOP_TIMEOUT_S)
            raise OSError(str(hello["error"]))
        ours.settimeout(None)
        self._process, self._channel = process, ours
        threading.Thread(
            target=self.bridge.serve, args=(ours,), name="api-bridge", daemon=True
        ).start()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    async def watch(self, stop: asyncio.Event, every_s: float = 1.0) -> None:
        """Start the API anew whenever its process dies (control goes on meanwhile)."""
        backoff_s = every_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff_s)
            if stop.is_set() or self.alive:
                backoff_s = every_s
                continue
            code = self._process.exitcode if self._process is not None else None
            log.error("API process died; starting it anew", extra={"exit_code": code})
            self._close_channel()
            try:
                await asyncio.to_thread(self.start)
                self.bridge.api_restarts.labels(self.bridge.state.site).inc()
                backoff_s = every_s
            except OSError as exc:
                log.error("API process did not start", extra={"error": str(exc)})
                backoff_s = min(backoff_s * 2, 30.0)

    def _close_channel(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(OSError):
                self._channel.shutdown(socket.SHUT_RDWR)  # the bridge thread sees its end
            self._channel.close()
            self._channel = None

    def stop(self) -> None:
        """Close the channel (the process ends itself), then make sure it has."""
        self._close_channel()
        process, self._process = self._process, None
        if process is None:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        process.join(STOP_TIMEOUT_S)
        if process.is_alive():
            log.warning("API process did not stop; terminating it")
            process.terminate()
            process.join(max(0.5, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
