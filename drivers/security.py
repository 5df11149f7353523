"""What a secured link needs, in the drivers' own terms (paths and secrets, no config types),
whom it trusts, and the TLS contexts both sides of Modbus/TCP Security use."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Role = Literal["server", "client"]  # a device serves, the controller is its client
_ROLE_USAGE = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}


@dataclass(frozen=True)
class LinkSecurity:
    certificate: Path
    private_key: Path
    peer_certificate: Path | None = None  # the device's own certificate (pinned)
    peer_ca: tuple[Path, ...] = ()  # CAs that may sign the device's certificate
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.peer_certificate is None and not self.peer_ca:
            # Without either, whoever answers at the address would be taken for the device.
            raise ValueError("a secured link needs a peer certificate or a peer CA to trust")

    @property
    def trusted_files(self) -> tuple[Path, ...]:
        pinned = (self.peer_certificate,) if self.peer_certificate is not None else ()
        return (*pinned, *self.peer_ca)


def load_certificates(paths: Iterable[Path]) -> tuple[x509.Certificate, ...]:
    """Every certificate of these PEM files (a file may hold several, e.g. a CA bundle)."""
    return tuple(c for p in paths for c in x509.load_pem_x509_certificates(p.read_bytes()))


def describe(cert: x509.Certificate) -> str:
    """A certificate as an operator compares it: its name and the start of its fingerprint."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else cert.subject.rfc4514_string()
    return f"{name!r}, SHA-256 {cert.fingerprint(hashes.SHA256()).hex()[:16]}…"


@dataclass(frozen=True)
class PeerTrust:
    """Whom a secured link trusts: a peer's certificate is accepted when it is one of these
    certificates (pinned), or one of them (a CA) signed it for the peer's role."""

    trusted: tuple[x509.Certificate, ...]

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> PeerTrust:
        return cls(load_certificates(paths))

    def refusal(self, cert: x509.Certificate, role: Role) -> str | None:
        """Why `cert` is not to be trusted, or None when it is."""
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return (
                f"its certificate {describe(cert)} is valid only from "
                f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
            )
        if cert in self.trusted:
            return None
        cas = [c for c in self.trusted if _is_ca(c)]
        if not (cas and _signed_by(cas, cert, now)):
            pinned = len(cas) < len(self.trusted)
            expected = (
                "neither the pinned one nor signed by a trusted CA"
                if pinned and cas
                else "not the pinned one"
                if pinned
                else "not signed by a trusted CA"
            )
            return f"its certificate {describe(cert)} is {expected}"
        if not _usable_for(cert, role):
            return f"its certificate {describe(cert)} is not for a {role}"
        return None


def _signed_by(cas: list[x509.Certificate], cert: x509.Certificate, now: dt.datetime) -> bool:
    try:
        _verifier(cas, now).verify(cert, [])
    except verification.VerificationError:
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _verifier(cas: list[x509.Certificate], now: dt.datetime) -> verification.ClientVerifier:
    # The chain and dates only, as asyncua's own TrustStore checks: OPC UA certificates are
    # not web certificates (no host names to match, often no key identifiers); the role is
    # checked apart.
    anything = verification.ExtensionPolicy.permit_all()
    ca_policy = anything.require_present(
        x509.BasicConstraints, verification.Criticality.AGNOSTIC, None
    )
    return (
        verification.PolicyBuilder()
        .store(verification.Store(cas))
        .time(now)
        .extension_policies(ca_policy=ca_policy, ee_policy=anything)
        .build_client_verifier()
    )


def _usable_for(cert: x509.Certificate, role: Role) -> bool:
    """A certificate that names its uses (extended key usage) must name this one."""
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return _ROLE_USAGE[role] in usages


def client_tls(sec: LinkSecurity) -> ssl.SSLContext:
    """The controller's side: verify the device against the certificates we trust (its own,
    pinned, or a CA's), show our certificate."""
    anchors = "".join(p.read_text() for p in sec.trusted_files)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=anchors)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a pinned device certificate suffices
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
