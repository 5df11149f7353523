"""The VEN's I/O with the VTN, through the `openadr3-client` library (its VEN client, models
and OAuth2 token handling; 3.0.1 and 3.1.0). Blocking calls: the VEN runs them on a thread of
their own, never on the control loop's.

Two things are done around the library:
- every request is bounded by `timeout_s` (the library sets none: a silent VTN would hold the
  thread for ever);
- events are read as JSON and checked one by one against the library's own event model, so
  one malformed event is refused alone (the library's list read refuses the whole list).
Failures come out as `VtnError` with a bounded kind: `unreachable`, `timeout`,
`token_refused`, `unauthorized`, `http_<status>`, `malformed`.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import requests
from oauthlib.oauth2 import OAuth2Error
from pydantic import ValidationError

from controller.grid.config import OpenADRConfig
from controller.grid.reports import ReportFigures, report_model

PAGE = 50  # the specification's default page size
MAX_PAGES = 20  # at most 1,000 programs or events a program: more is a VTN gone wrong


class VtnError(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


@dataclass(frozen=True)
class Reading:
    """One complete read of the VTN: every event of the followed programs."""

    ven_id: str
    programs: dict[str, str]  # id → name
    events: tuple[Any, ...]  # the library's event models
    malformed: tuple[tuple[str, str], ...]  # (event id, what is wrong)


def _version(cfg: OpenADRConfig) -> Any:
    from openadr3_client.version import OADRVersion

    return OADRVersion.OADR_301 if cfg.version == "3.0.1" else OADRVersion.OADR_310


def _models(cfg: OpenADRConfig, name: str) -> Any:
    package = "oadr301" if cfg.version == "3.0.1" else "oadr310"
    return importlib.import_module(f"openadr3_client.{package}.models.{name}")


def _bounded(session: requests.Session, timeout_s: float) -> None:
    """Every request of this session, and its token fetches, given up after `timeout_s`."""
    session.request = functools.partial(session.request, timeout=timeout_s)  # type: ignore[method-assign]
    manager = getattr(getattr(session, "auth", None), "_token_manager", None)
    oauth = getattr(manager, "oauth", None)
    if isinstance(oauth, requests.Session):
        oauth.request = functools.partial(oauth.request, timeout=timeout_s)  # type: ignore[method-assign]


def _failure(exc: Exception) -> VtnError:
    if isinstance(exc, VtnError):
        return exc
    if isinstance(exc, OAuth2Error):
        return VtnError("token_refused", f"{type(exc).__name__}: {exc.description or exc}")
    if isinstance(exc, requests.Timeout):
        return VtnError("timeout", type(exc).__name__)
    if isinstance(exc, requests.ConnectionError):
        return VtnError("unreachable", type(exc).__name__)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        kind = "unauthorized" if status == 401 else f"http_{status}"
        return VtnError(kind, f"{exc.request.method if exc.request else ''} {exc.response.url}")
    if isinstance(exc, ValidationError | ValueError | KeyError | TypeError):
        return VtnError("malformed", f"{type(exc).__name__}: {str(exc)[:200]}")
    return VtnError("unreachable", f"{type(exc).__name__}: {str(exc)[:200]}")


class VtnLink:
    """The library's VEN client, made on first use and made anew after a refused token."""

    def __init__(self, cfg: OpenADRConfig, callback_token: str | None = None) -> None:
        self.cfg, self.callback_token = cfg, callback_token
        self._client: Any = None
        self.ven_id: str | None = None
        self._subscribed: frozenset[str] = frozenset()  # program ids

    def _made(self) -> Any:
        if self._client is None:
            from openadr3_client.ven.http_factory import VirtualEndNodeHttpClientFactory

            cfg = self.cfg
            if cfg.allow_http:  # oauthlib refuses a token over plain HTTP unless told (tests)
                os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
            client = VirtualEndNodeHttpClientFactory.create_http_ven_client(
                vtn_base_url=cfg.vtn_url.rstrip("/"),
                client_id=cfg.client_id,
                client_secret=cfg.secret_text(),
                token_url=cfg.token_url,
                scopes=list(cfg.scopes) or None,
                verify_vtn_tls_certificate=Path(cfg.ca) if cfg.ca is not None else True,
                allow_insecure_http=cfg.allow_http,
                version=_version(cfg),
            )
            parts = (client.events, client.programs, client.reports, client.vens)
            for part in (*parts, client.subscriptions):
                _bounded(part.session, cfg.timeout_s)
            self._client = client
        return self._client

    def _call[T](self, job: Callable[[Any], T]) -> T:
        try:
            return job(self._made())
        except Exception as exc:
            failure = _failure(exc)
            if failure.kind in ("unauthorized", "token_refused"):
                self._client = None  # a fresh token next time
            raise failure from exc

    def _pages(self, part: Any, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in range(MAX_PAGES):
            response = part.session.get(
                f"{part.base_url}/{path}", params={**params, "skip": page * PAGE, "limit": PAGE}
            )
            response.raise_for_status()
            items = response.json()
            if not isinstance(items, list):
                raise VtnError("malformed", f"{path}: a list expected, got {type(items).__name__}")
            out += items
            if len(items) < PAGE:
                return out
        raise VtnError("malformed", f"{path}: more than {PAGE * MAX_PAGES} objects")

    def read(self) -> Reading:
        return self._call(self._read)

    def _read(self, client: Any) -> Reading:
        if self.ven_id is None:
            self.ven_id = self._register(client)
        program_model = _models(self.cfg, "program.program").ExistingProgram
        event_model = _models(self.cfg, "event.event").ExistingEvent
        programs: dict[str, str] = {}
        for raw in self._pages(client.programs, "programs", {}):
            p = program_model.model_validate(raw)
            if not self.cfg.programs or p.program_name in self.cfg.programs:
                programs[p.id] = p.program_name
        if self.cfg.callback_url is not None and frozenset(programs) != self._subscribed:
            self._subscribe(client, programs)
        events: list[Any] = []
        malformed: list[tuple[str, str]] = []
        for program_id in programs:
            for raw in self._pages(client.events, "events", {"programID": program_id}):
                try:
                    events.append(event_model.model_validate(raw))
                except ValidationError as exc:
                    where = str(raw.get("id", "?")) if isinstance(raw, dict) else "?"
                    first = exc.errors()[0]
                    loc = ".".join(str(x) for x in first["loc"])
                    malformed.append((where, f"{loc}: {first['msg']}"))
        return Reading(self.ven_id, programs, tuple(events), tuple(malformed))

    def _subscribe(self, client: Any, programs: dict[str, str]) -> None:
        """A subscription to each followed program's events, calling back with this run's
        token; this VEN's older ones (an earlier run's token) deleted first."""
        models = _models(self.cfg, "subscriptions.subscription")
        name = self.cfg.ven_name
        for raw in self._pages(client.subscriptions, "subscriptions", {"clientName": name}):
            if isinstance(raw, dict) and raw.get("clientName") == name and "id" in raw:
                client.subscriptions.delete_subscription_by_id(str(raw["id"]))
        for program_id in programs:
            operation = models.ObjectOperation(
                objects=(models.Object.EVENT,),
                operations=(models.Operation.POST, models.Operation.PUT, models.Operation.DELETE),
                callback_url=self.cfg.callback_url,
                bearer_token=self.callback_token,
            )
            client.subscriptions.create_subscription(
                new_subscription=models.NewSubscription(
                    client_name=name, program_id=program_id, object_operations=(operation,)
                )
            )
        self._subscribed = frozenset(programs)

    def _register(self, client: Any) -> str:
        """This VEN's id at the VTN: found by name, or registered."""
        found = client.vens.get_vens(ven_name=self.cfg.ven_name, target=None, pagination=None)
        if found:
            return str(found[0].id)
        new_ven = _models(self.cfg, "ven.ven").NewVen(ven_name=self.cfg.ven_name)
        return str(client.vens.create_ven(new_ven=new_ven).id)

    def report(self, figures: ReportFigures) -> None:
        """Send one report, as the library's model of this version."""
        models = SimpleNamespace(
            report=_models(self.cfg, "report.report"),
            payload=_models(self.cfg, "report.report_payload"),
            descriptor=_models(self.cfg, "event.event_payload"),
        )
        name = self.cfg.ven_name
        self._call(
            lambda client: client.reports.create_report(
                new_report=report_model(models, figures, client_name=name, resource=name)
            )
        )
