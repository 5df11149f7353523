"""A small OpenADR 3 VTN (3.0.1 and 3.1.0 REST API) for tests and the demo.

It serves what the `openadr3-client` library's VEN and business-logic (BL) clients call, over
real HTTP on loopback, with state in memory:

- ``POST /auth/token``: OAuth2 client credentials (HTTP Basic or form ``client_id`` /
  ``client_secret``), answers ``{"access_token", "token_type": "Bearer", "expires_in"}``;
  ``GET /auth/server``: 3.1.0's discovery, ``{"tokenURL": ...}`` (a 3.1.0 client given no
  token URL asks it, unauthenticated); ``GET /notifiers`` (3.1.0): ``{"WEBHOOK": true}``.
- ``/programs``, ``/events``, ``/reports``, ``/vens``, ``/subscriptions``, ``/resources``
  (3.1.0) and ``/vens/{venID}/resources`` (3.0.1): list (``skip``, ``limit`` (50 by default),
  ``programID``, ``eventID``, ``clientName``, ``venName``, ``resourceName``, ``venID``, and
  targets: 3.1.0's ``targets`` (all must match), 3.0.1's ``targetType`` + ``targetValues``
  (any value)), create, read, update, delete. One router serves both versions: the paths
  are the same, and the server provisions the fields of both (``id``, ``createdDateTime``,
  ``modificationDateTime``, ``objectType``, and 3.1.0's ``clientID`` on reports, VENs and
  resources: the client whose token made it).
- Every API path needs an unexpired bearer token from ``/auth/token``, else 401 with a
  problem JSON; any valid token may do anything.
- A PUT merges the body's non-null fields into the stored object: the library's 3.0.1
  update models send every unset field as null (an update of the intervals alone would
  otherwise wipe the event's programID).
- Subscriptions: on a create, update or delete of any object, each subscription whose
  objectOperations name the object type and the operation (POST, PUT, DELETE), and whose
  programID (when set) is the object's, gets ``{objectType, operation, object}`` POSTed to its
  callbackUrl with its bearerToken, in the background; failures are logged, never raised.

What the library (openadr3-client 2.4.2) does against it, as `tests/test_vtn_sim.py` checks:

- Plain HTTP: besides ``allow_insecure_http=True`` the VEN's process needs
  ``OAUTHLIB_INSECURE_TRANSPORT=1`` in its environment, else every token fetch raises
  ``oauthlib.oauth2.rfc6749.errors.InsecureTransportError``. 3.0.1 clients must be given
  ``token_url``; a 3.1.0 client given none asks ``/auth/server`` in its factory, so there a
  VTN that is down makes the factory itself raise ``requests.exceptions.ConnectionError``.
- Token refused (wrong secret, or ``refuse_tokens``): the token endpoint answers 401
  ``{"error": "invalid_client"}``; the first API call of each of the client's interfaces
  (``events``, ``reports``, ...: each has its own token manager) raises
  ``oauthlib.oauth2.rfc6749.errors.InvalidClientError`` (an ``OAuth2Error``, not a requests
  exception; from requests-oauthlib's ``fetch_token``); nothing is sent to the API path.
- Token expired on the server (``expire_tokens``): the API answers 401 and the library raises
  ``requests.exceptions.HTTPError`` (``raise_for_status``; ``.response.status_code == 401``).
  It does not fetch a new token on a 401: its token manager keeps a token for half its
  ``expires_in`` (whole seconds, rounded down) and only then fetches another, so every call
  fails until then. A VEN must rebuild its client (new token managers) on a 401. Tokens
  that expire on their own are renewed in time (the half-life margin).
- VTN unreachable (``go_down``): ``requests.exceptions.ConnectionError`` (connection
  refused), from the token fetch or the API call alike; after ``come_back`` the same client
  works again (its token too: the VTN's state is kept).
- Malformed events (``put_raw_event``): the library validates every event it reads with
  pydantic; ``get_events`` validates the whole list at once (``TypeAdapter(list[ExistingEvent])``),
  so one bad event raises ``pydantic.ValidationError`` (``pydantic_core``'s, a ``ValueError``)
  for the whole call and no event is returned; ``get_event_by_id`` raises it for that event
  only. What counts as bad is narrow: a payload with no values, an interval with no payloads,
  a missing ``programID``, an unparsable or time-zone-less datetime, and in 3.0.1 an event
  with no ``intervals`` (optional in 3.1.0: it reads back as None). These read back without
  error, so the VEN must check them itself: a cap of −5 MW (no sign check), an unknown payload
  type (``EventPayloadType`` takes any 1-128 character string as a custom type), a string
  value such as ``"5 MW"`` (payload values may be int, float, str, bool or a point), and
  intervals in the past.
- ``get_notifiers`` (3.1.0) raises ``pydantic.ValidationError`` against this VTN: the
  library's ``NotifierDetails`` requires the ``MQTT`` member the spec leaves optional.

Run alone (the demo): ``python -m drivers.sim.vtn --port 8081 --client ven:secret``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import threading
import time
import uuid
from typing import Self

import uvicorn

from drivers.sim.vtn_api import START_TIMEOUT_S, Obj, VtnState, build_app, now_iso

log = logging.getLogger("gridpilot.sim.vtn")


class VtnServer:
    """The VTN on a loopback port, run by uvicorn in a daemon thread with its own event loop.
    Usable from sync code (``with VtnServer(...) as vtn``) or async code (``async with``; start
    and stop then run in a worker thread)."""

    def __init__(
        self,
        clients: dict[str, str],
        host: str = "127.0.0.1",
        port: int = 0,
        token_ttl_s: float = 3600.0,
    ) -> None:
        self.host, self.port = host, port
        self.state = VtnState(dict(clients), token_ttl_s)
        self.app = build_app(self.state)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/auth/token"

    @property
    def refuse_tokens(self) -> bool:
        return self.state.refuse_tokens

    @refuse_tokens.setter
    def refuse_tokens(self, value: bool) -> None:
        self.state.refuse_tokens = value

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        return self.state.requests

    def start(self) -> None:
        """Serve; returns once the port accepts connections."""
        if self._thread is not None:
            return
        sock = self._bind()
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])), name="vtn-sim", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(START_TIMEOUT_S)
                sock.close()
                raise RuntimeError(f"VTN simulator did not start on {self.url}")
            time.sleep(0.01)
        self._server, self._thread = server, thread
        log.info("VTN simulator serving on %s", self.url)

    def _bind(self) -> socket.socket:
        """A listening socket on the port (chosen the first time); SO_REUSEADDR so come_back
        binds the same port again while old connections are in TIME_WAIT."""
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
        # without it every response waits out the client's delayed ACK (40 ms) behind Nagle.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        return sock

    def stop(self) -> None:
        """Stop serving: the port is closed and the thread has ended when this returns."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join()
        self._server = self._thread = None
        log.info("VTN simulator on %s stopped", self.url)

    def go_down(self) -> None:
        """A VTN outage: connections are refused; the state is kept."""
        self.stop()

    def come_back(self) -> None:
        """Serve again, on the same port, with the same state."""
        self.start()

    def expire_tokens(self) -> None:
        """Every token issued so far becomes invalid (401 on use)."""
        with self.state.lock:
            self.state.tokens.clear()

    def put_raw_event(self, body: Obj) -> str:
        """Store an event as given, unvalidated (malformed-payload tests). Only the fields the
        VTN provisions are filled in, where absent, so a client's error is about the body."""
        created = now_iso()
        event = {"id": str(uuid.uuid4()), "createdDateTime": created} | dict(body)
        event.setdefault("modificationDateTime", created)
        event.setdefault("objectType", "EVENT")
        with self.state.lock:
            self.state.store["events"][str(event["id"])] = event
        return str(event["id"])

    def reports(self) -> list[Obj]:
        """Every report as stored."""
        return self.state.all("reports")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.to_thread(self.stop)


def main(argv: list[str] | None = None) -> None:
    """Serve a VTN until interrupted (the demo's grid operator)."""
    parser = argparse.ArgumentParser(description="OpenADR 3 VTN simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--token-ttl-s", type=float, default=3600.0)
    parser.add_argument(
        "--client", action="append", default=[], metavar="ID:SECRET", help="repeatable"
    )
    args = parser.parse_args(argv)
    clients = dict(c.split(":", 1) for c in args.client)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with VtnServer(clients, args.host, args.port, args.token_ttl_s) as vtn:
        log.info("VTN at %s, tokens at %s, clients %s", vtn.url, vtn.token_url, sorted(clients))
        stopping = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a container stopping
            signal.signal(sig, lambda *_: stopping.set())
        stopping.wait()


if __name__ == "__main__":
    main()
