"""The operator console's files (controller/ui/: plain HTML, CSS and ES modules, no build
step), as the API serves them: each revalidated on load, under a Content-Security-Policy that
lets the page load only its own files and talk only to this server. The page needs no key;
every /v1 call it makes does."""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

UI = Path(__file__).parent / "ui"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
REVALIDATE = "no-cache"  # cached, but checked (ETag) each load: an upgrade is seen at once
HEADERS = {"Cache-Control": REVALIDATE, "Content-Security-Policy": CSP}


class ConsoleFiles(StaticFiles):
    """The console's assets (/ui/), with the console's headers."""

    def __init__(self) -> None:
        super().__init__(directory=UI)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def console_page() -> FileResponse:
    """The console's page (/)."""
    return FileResponse(UI / "index.html", media_type="text/html", headers=HEADERS)
