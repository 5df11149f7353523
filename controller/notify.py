"""`gridpilot notify`: a workload notice posted to a site's API, for a job scheduler's prolog
and epilog or any script. It prints the notice as stored, or the API's problem document.

Exit status: 0 stored; 2 refused (the API's 4xx: a bad notice, a bound reached, the key's
role) or a bad argument; 1 when the API could not be reached or failed (5xx: try again).

`python -m controller.notify` is the same command without the rest of the CLI's imports: it
starts in under a second."""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path
from typing import Annotated, Any, get_args

import httpx
import typer

from controller.notices import NoticeKind

KINDS: tuple[str, ...] = get_args(NoticeKind)


def notice_body(
    kind: str,
    at_s: float,
    duration_s: float | None = None,
    power_w: float | None = None,
    gpus: int | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """The JSON a notice is posted as: the fields given, none absent sent as null."""
    given = {"duration_s": duration_s, "power_w": power_w, "gpus": gpus, "job_id": job_id}
    return {"kind": kind, "at_s": at_s, **{k: v for k, v in given.items() if v is not None}}


def call_api(
    url: str,
    key: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    ca: Path | None = None,
    timeout_s: float = 10.0,
) -> httpx.Response:
    """One request to the site's API at `url` (trusting `ca`, a PEM file, besides the
    system's authorities when given)."""
    verify: ssl.SSLContext | bool = True
    if ca is not None:
        verify = ssl.create_default_context(cafile=str(ca))
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, verify=verify, timeout=timeout_s) as client:
        return client.request(method, path, json=body, headers=headers)


def _fail(message: str, status: int) -> typer.Exit:
    typer.echo(f"gridpilot: {message}", err=True)
    return typer.Exit(status)


def notify(
    kind: Annotated[str, typer.Argument(help=", ".join(KINDS) + "; or cancel (with --id)")],
    url: Annotated[
        str,
        typer.Option("--url", envvar="GRIDPILOT_URL", help="the site's API, e.g. https://gp:8080"),
    ],
    key: Annotated[
        str,
        typer.Option(
            "--key",
            envvar="GRIDPILOT_KEY",
            show_default=False,
            help="an API key (workload or operator); better in GRIDPILOT_KEY than on the line",
        ),
    ],
    at_s: Annotated[float | None, typer.Option("--at", help="unix s it takes effect")] = None,
    in_s: Annotated[
        float | None, typer.Option("--in", help="or this many s from now (default: now)")
    ] = None,
    duration_s: Annotated[
        float | None, typer.Option("--duration-s", help="how long it lasts, s")
    ] = None,
    power_w: Annotated[
        float | None, typer.Option("--power-w", help="the workload's draw after it, W")
    ] = None,
    gpus: Annotated[
        int | None, typer.Option("--gpus", help="or its GPU count (the site turns it into W)")
    ] = None,
    job_id: Annotated[str | None, typer.Option("--job-id", help="the job it is about")] = None,
    notice_id: Annotated[
        int | None, typer.Option("--id", min=1, help="cancel: the notice's id, as printed")
    ] = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", exists=True, dir_okay=False, help="the site's CA (PEM)")
    ] = None,
    timeout_s: Annotated[float, typer.Option("--timeout-s", min=0.1, max=300)] = 10.0,
) -> None:
    """Announce what the workload will do: post a notice to the site's API (POST
    /v1/notices), or take one back (`cancel --id N`: DELETE /v1/notices/N; a workload key
    cancels only its own). Prints the notice as stored; exit 2 with the API's problem document
    on a refusal, 1 when the API cannot be reached or fails."""
    if kind == "cancel":
        if notice_id is None:
            raise _fail("cancel needs --id (the notice's id)", 2)
        method, path, body, ok = "DELETE", f"/v1/notices/{notice_id}", None, 200
    elif kind not in KINDS:
        raise _fail(f"KIND must be one of {', '.join(KINDS)} or cancel, not {kind!r}", 2)
    elif at_s is not None and in_s is not None:
        raise _fail("give --at or --in, not both", 2)
    else:
        when = at_s if at_s is not None else time.time() + (in_s or 0.0)
        body = notice_body(kind, when, duration_s, power_w, gpus, job_id)
        method, path, ok = "POST", "/v1/notices", 201
    try:
        answer = call_api(url, key, method, path, body, ca, timeout_s)
    except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
        raise _fail(f"no answer from {url}: {exc}", 1) from None
    try:
        shown = json.dumps(answer.json(), indent=2)
    except ValueError:
        shown = answer.text
    if answer.status_code == ok:
        typer.echo(shown)
        return
    typer.echo(shown, err=True)
    raise typer.Exit(2 if answer.status_code < 500 else 1)


if __name__ == "__main__":  # pragma: no cover
    typer.run(notify)
