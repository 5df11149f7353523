"""A real etcd cluster for tests: `etcd` (Debian's `etcd-server`, which `make test` installs)
run as N member processes on free loopback ports, each in a folder of its own, stopped on the
way out. Members can be killed, frozen and started again to make the faults HA must survive."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.sites import free_port

START_S = 30.0  # a loaded 2-core machine: members find each other and elect a leader


def etcd_binary() -> str:
    path = shutil.which("etcd") or "/usr/bin/etcd"
    if not Path(path).exists():
        pytest.fail(
            "etcd is missing: `make test` installs it (Debian package etcd-server); the HA "
            "tests need a real etcd cluster",
            pytrace=False,
        )
    return path


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def healthy(self) -> bool:
        try:
            r = httpx.get(f"http://{self.endpoint}/health", timeout=1.0)
            return r.status_code == 200 and r.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False


@dataclass
class EtcdCluster:
    members: list[Member] = field(default_factory=list)
    # More flags for a member, over the ones below (e.g. an https listener beside the http one).
    extra_flags: Callable[[Member], dict[str, str]] | None = None

    @property
    def endpoints(self) -> list[str]:
        """`host:port` of each member's client URL, as the site file's `ha.endpoints` takes."""
        return [m.endpoint for m in self.members]

    def start(self, member: Member, state: str = "new") -> None:
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        client_url = f"http://{member.endpoint}"
        flags = {
            "name": member.name,
            "data-dir": str(member.data_dir),
            "listen-client-urls": client_url,
            "advertise-client-urls": client_url,
            "listen-peer-urls": member.peer_url,
            "initial-advertise-peer-urls": member.peer_url,
            "initial-cluster": cluster,
            "initial-cluster-state": state,
            "initial-cluster-token": "gridpilot-test",
            # Loopback: a short heartbeat finds a lost member (and elects anew) quickly.
            "heartbeat-interval": "50",
            "election-timeout": "500",
        }
        if self.extra_flags is not None:
            flags |= self.extra_flags(member)
        member.proc = subprocess.Popen(
            [etcd_binary(), *(f"--{k}={v}" for k, v in flags.items())],
            stdout=subprocess.DEVNULL,
            stderr=member.log.open("ab"),
        )

    def wait_healthy(self, members: list[Member] | None = None, timeout_s: float = START_S) -> None:
        deadline = time.monotonic() + timeout_s
        for m in members or self.members:
            while not m.healthy():
                if m.proc is not None and m.proc.poll() is not None:
                    raise AssertionError(f"etcd {m.name} exited: {m.log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"etcd {m.name} not healthy: {m.log.read_text()[-2000:]}")
                time.sleep(0.1)

    def kill(self, member: Member) -> None:
        """Gone at once (`kill -9`): its data stays, for `restart`."""
        if member.proc is not None and member.proc.poll() is None:
            member.proc.kill()
            member.proc.wait(timeout=10)

    def restart(self, member: Member) -> None:
        self.start(member, state="existing")

    def freeze(self, member: Member) -> None:
        assert member.proc is not None
        member.proc.send_signal(signal.SIGSTOP)

    def thaw(self, member: Member) -> None:
        assert member.proc is not None
        member.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Killed: their data goes with the test's folder (a graceful stop of a member whose
        peers are stopping waits for them, seconds each)."""
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.kill()
        for m in self.members:
            if m.proc is not None:
                m.proc.wait(timeout=10)


@contextmanager
def etcd_cluster(
    folder: Path, size: int = 3, extra_flags: Callable[[Member], dict[str, str]] | None = None
) -> Iterator[EtcdCluster]:
    """`size` etcd members on free loopback ports under `folder`, healthy; stopped after."""
    cluster = EtcdCluster(extra_flags=extra_flags)
    for i in range(size):
        data = folder / f"etcd{i}"
        data.mkdir(parents=True)
        cluster.members.append(
            Member(f"m{i}", free_port(), free_port(), data / "data", data / "etcd.log")
        )
    try:
        for m in cluster.members:
            cluster.start(m)
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop()
