"""The site file's `ha:` section: where etcd is, how long a lease lives, who this node is.

Off by default: a single controller needs no etcd at all. Every controller of a pair runs the
same site file; each tells its own name by the environment (`GRIDPILOT_HA__NODE`) or takes its
host's name.
"""

from __future__ import annotations

import socket
from typing import Annotated

from pydantic import Field, FilePath, model_validator

from controller.fields import Credentials, Strict

Endpoint = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*:[0-9]{1,5}$")]
NodeName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]


class EtcdTlsConfig(Strict):
    """TLS to etcd: the CA that signed the members' certificates, and this node's own
    certificate and key where the members ask clients for one."""

    ca: FilePath = Field(description="the etcd members' CA certificate (PEM)")
    certificate: FilePath | None = Field(None, description="this node's client certificate")
    private_key: FilePath | None = Field(None, description="its private key (PEM)")

    @model_validator(mode="after")
    def _pair(self) -> EtcdTlsConfig:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


class HAConfig(Credentials):
    """An active/standby pair (or more) through etcd: one leader writes to the devices; the
    others poll them, compute the same state, and serve the API read-only."""

    enabled: bool = Field(False, description="false: one controller, no etcd")
    endpoints: list[Endpoint] = Field(
        default_factory=lambda: ["127.0.0.1:2379"],
        min_length=1,
        max_length=15,
        description="etcd members' client addresses, host:port",
    )
    node: NodeName | None = Field(
        None, description="this controller's name (default: the host's); GRIDPILOT_HA__NODE"
    )
    prefix: str = Field(
        "/gridpilot",
        pattern=r"^/[A-Za-z0-9/._-]{0,200}$",
        description="etcd keys under this prefix and the site's name",
    )
    ttl_s: float = Field(2.0, ge=1.0, le=60.0, description="the leader's lease, s")
    margin_s: float = Field(
        0.3,
        gt=0.0,
        le=10.0,
        description="for clocks and scheduling: a leader stops writing this long before its "
        "lease can expire, and a new one waits this long before its first write, s",
    )
    timeout_s: float = Field(1.0, gt=0.0, le=30.0, description="each call to etcd, s")
    tls: EtcdTlsConfig | None = Field(None, description="TLS to etcd; none: plain gRPC")

    @model_validator(mode="after")
    def _margin(self) -> HAConfig:
        if self.margin_s >= self.ttl_s / 2:
            raise ValueError(
                f"margin_s ({self.margin_s}) must be under half of ttl_s ({self.ttl_s}): a "
                "leader renews its lease several times a TTL and must still have time to write"
            )
        return self

    @property
    def node_name(self) -> str:
        return self.node or socket.gethostname()

    def site_prefix(self, site: str) -> bytes:
        """Every key of this site in etcd starts with this."""
        return f"{self.prefix.rstrip('/')}/{site}".encode()
