"""Leadership and its fencing arithmetic, pure: no I/O, no clock reads (times are passed in,
monotonic seconds).

Every reader (the control loop, the drivers' write gate, the API, metrics) takes one immutable
`Leadership` record and asks it `may_write(now)`. The elector replaces the record whole; nothing
mutates it.

Why the write window is safe. Leadership is a key in etcd bound to a lease of `ttl_s`; etcd
deletes the key when the lease expires or is revoked, and only then can another node create it.

- The old leader may write until `renew_sent + ttl_s - margin_s`, where `renew_sent` is when it
  *sent* the newest grant or keepalive that etcd acknowledged. etcd counts the TTL from when it
  *received* that request, which is later, so the lease cannot expire at etcd before
  `renew_sent + ttl_s`: the leader stops `margin_s` before the earliest moment the key can
  vanish, whether or not it can still reach etcd.
- The new leader may write from `margin_s` after it won the key. It can only have won after the
  key vanished, so the old leader stopped at least `margin_s` before; waiting `margin_s` more
  puts `2 × margin_s` between the last write the old leader may start and the first the new one
  may. That covers a write still in flight to a device and the drift between the nodes' clocks
  and etcd's.
- A clean hand-over (the old leader stops writing, then revokes its lease) skips the wait for
  the TTL, not the new leader's `margin_s`.

The margin must be a small part of the TTL (`0 < margin_s < ttl_s / 2`), or a leader whose
keepalives arrive on time could spend most of its term fenced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["leader", "standby", "unknown"]


def check_timing(ttl_s: float, margin_s: float) -> None:
    """Raise ValueError for a lease TTL and fencing margin that cannot fence safely."""
    if not ttl_s >= 1.0:  # etcd's leases count whole seconds
        raise ValueError(f"ha lease ttl_s = {ttl_s!r}: must be at least 1 s")
    if not 0.0 < margin_s < ttl_s / 2:
        raise ValueError(
            f"ha fencing margin_s = {margin_s!r}: must be above 0 and below ttl_s / 2 "
            f"({ttl_s / 2!r} s for ttl_s = {ttl_s!r})"
        )


def write_until(renew_sent: float, ttl_s: float, margin_s: float) -> float:
    """The end of a leader's write window: `margin_s` before the earliest lease expiry."""
    return renew_sent + ttl_s - margin_s


def write_from(won_at: float, margin_s: float) -> float:
    """The start of a new leader's write window: `margin_s` after it won the key."""
    return won_at + margin_s


def lease_lost(renew_sent: float, ttl_s: float, now: float) -> bool:
    """Whether the lease has certainly expired by etcd's count (unless etcd extended it)."""
    return now >= renew_sent + ttl_s


@dataclass(frozen=True)
class Leadership:
    role: Role
    node: str  # this node
    leader: str | None  # the leader's node name as last seen in etcd
    token: int | None  # while leader: the leader key's create revision (the fencing token)
    write_from: float  # monotonic
    write_until: float  # monotonic
    since_s: float  # wall time of the last role change

    def may_write(self, now: float) -> bool:
        return self.role == "leader" and self.write_from <= now < self.write_until

    @classmethod
    def unknown(cls, node: str, since_s: float, leader: str | None = None) -> Leadership:
        """etcd not reached yet, or lost while not leading."""
        return cls("unknown", node, leader, None, 0.0, 0.0, since_s)

    @classmethod
    def standby(cls, node: str, leader: str | None, since_s: float) -> Leadership:
        return cls("standby", node, leader, None, 0.0, 0.0, since_s)

    @classmethod
    def leading(
        cls, node: str, token: int, write_from: float, write_until: float, since_s: float
    ) -> Leadership:
        return cls("leader", node, node, token, write_from, write_until, since_s)
