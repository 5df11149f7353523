"""Certificates for secured links: Modbus/TCP Security (TLS) and OPC UA Basic256Sha256.

A small private CA signs one certificate for the devices (server) and one for the controller
(client); each carries the host's IP or DNS name and an OPC UA application URI, which both
protocols check. Good for a site's own trust domain and for tests; a site with a PKI uses its
own files instead (the config names paths, not this module).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from drivers.private import private_dir, write_private

CONTROLLER_URI = "urn:gridpilot:controller"
DEVICE_URI = "urn:gridpilot:device"
API_URI = "urn:gridpilot:api"


@dataclass(frozen=True)
class Pair:
    certificate: Path  # PEM
    private_key: Path  # PEM, unencrypted: made 0600, in a folder made 0700


@dataclass(frozen=True)
class SiteCerts:
    ca: Path
    device: Pair
    controller: Pair
    api: Pair  # the HTTPS API's (a server certificate for the same hosts)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridpilot"),
         x509.NameAttribute(NameOID.COMMON_NAME, common)]
    )  # fmt: skip


def _host(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(pair: Pair, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
    pair.certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(pair.private_key, pem)  # 0600 from its first byte, never chmod'ed later


def make_site_certs(folder: Path, hosts: list[str], days: int = 365) -> SiteCerts:
    """A CA, a device certificate for `hosts` and a controller certificate, into `folder`."""
    private_dir(folder)  # it holds unencrypted private keys
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("gridpilot site CA"))
        .issuer_name(_name("gridpilot site CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = folder / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(role: str, uri: str, usage: x509.ObjectIdentifier) -> Pair:
        key = _key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"gridpilot {role}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(uri), *(_host(h) for h in hosts)]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                # OPC UA wants all four: signatures, key and data encipherment, non-repudiation.
                x509.KeyUsage(True, True, True, True, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        pair = Pair(
            folder / f"{role}.pem", folder / f"{role}-key.pem"
        )  # PEM both: asyncua goes by suffix
        _write(pair, cert, key)
        return pair

    return SiteCerts(
        ca=ca_path,
        device=leaf("device", DEVICE_URI, ExtendedKeyUsageOID.SERVER_AUTH),
        controller=leaf("controller", CONTROLLER_URI, ExtendedKeyUsageOID.CLIENT_AUTH),
        api=leaf("api", API_URI, ExtendedKeyUsageOID.SERVER_AUTH),
    )


def api_certificate(folder: Path, hosts: list[str], days: int = 825) -> tuple[Path, Pair]:
    """The API's certificate in `folder` and the CA that signed it: those there already, or
    a new site CA and certificates for `hosts` when the folder has none."""
    pair = Pair(folder / "api.pem", folder / "api-key.pem")
    ca = folder / "ca.pem"
    if not (pair.certificate.exists() and pair.private_key.exists() and ca.exists()):
        made = make_site_certs(folder, hosts, days)
        ca, pair = made.ca, made.api
    return ca, pair
