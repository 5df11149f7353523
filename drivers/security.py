"""What a secured link needs, in the drivers' own terms (paths and secrets, no config types),
and the TLS contexts both sides of Modbus/TCP Security use."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LinkSecurity:
    certificate: Path
    private_key: Path
    peer_certificate: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def client_tls(sec: LinkSecurity) -> ssl.SSLContext:
    """The controller's side: verify the device against the site's CA, show our certificate."""
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(sec.peer_certificate) if sec.peer_certificate else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # Modbus/TCP Security asks for 1.2 or later
    ctx.load_cert_chain(sec.certificate, sec.private_key)
    return ctx


def server_tls(certificate: Path, private_key: Path, client_ca: Path) -> ssl.SSLContext:
    """A device's side: show its certificate, and require one from the client (mutual TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certificate, private_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(client_ca)
    return ctx
