"""An HA pair as a site runs one, for tests and `bench/bench_failover.py`: a real etcd cluster,
the simulated plant (in this process, so its write log and meter are at hand), and two or more
`gridpilot run` processes on the same site file, each with its node name, API port and data
folder from the environment.

Who wrote what is checked at the plant: each write a simulated Modbus device takes is logged
with the writer's end of the connection, and psutil says which process owns that end."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from controller.sitefile import load_site, plant_of
from drivers.sim.stack import SimulatorThread, Write
from tests.etcd import EtcdCluster
from tests.processes import GRIDPILOT
from tests.sites import free_port, site_dict

TTL_S = 2.0
MARGIN_S = 0.3
# The devices' watchdog outlasts a fail-over (TTL + margin + a tick, with room): a leader
# lost costs the grid its smoothing for that long, not the batteries' setpoints as well.
WATCHDOG_S = 5.0


@dataclass
class Node:
    name: str
    api_port: int
    data_dir: Path
    proc: subprocess.Popen | None = None
    log: Path | None = None
    peers: set[str] = field(default_factory=set)  # its connections to the plant, host:port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def see_connections(self) -> set[str]:
        """Its TCP connections' local ends now (added to those seen before: a link it made
        again has a new port, and writes on the old one still count as its own)."""
        if self.alive():
            for c in psutil.Process(self.pid).net_connections(kind="tcp"):
                if c.raddr and c.laddr:
                    self.peers.add(f"{c.laddr.ip}:{c.laddr.port}")
        return self.peers


class HaSite:
    def __init__(self, folder: Path, etcd: EtcdCluster) -> None:
        self.folder, self.etcd = folder, etcd
        self.admin_key = ""  # made in the first node's file (create_admin_key)
        data = site_dict(folder / "data")
        data["ha"] = {
            "enabled": True,
            "endpoints": etcd.endpoints,
            "ttl_s": TTL_S,
            "margin_s": MARGIN_S,
            "prefix": f"/gridpilot-test-{free_port()}",  # a fresh state for each pair
        }
        data["simulation"]["heartbeat_timeout_s"] = WATCHDOG_S
        self.site_file = folder / "site.yaml"
        self.site_file.write_text(yaml.safe_dump(data))
        self.site = load_site(self.site_file)
        self.sim = SimulatorThread(plant_of(self.site))
        self.nodes: dict[str, Node] = {}

    # --- the plant ------------------------------------------------------------------------
    def start_plant(self) -> None:
        self.sim.start()

    def writes(self, since: float = 0.0) -> list[Write]:
        return [w for w in list(self.sim.stack.writes) if w.at >= since]

    def first_write(self, node: Node, since: float) -> Write | None:
        return next((w for w in self.writes(since) if w.peer in node.see_connections()), None)

    def grid(self, since: float, until: float = float("inf")) -> list[tuple[float, float]]:
        return [(t, w) for t, w in list(self.sim.stack.grid_w) if since <= t <= until]

    # --- the controllers ------------------------------------------------------------------
    def node(self, name: str) -> Node:
        if name not in self.nodes:
            self.nodes[name] = Node(name, free_port(), self.folder / name)
        return self.nodes[name]

    def create_admin_key(self, node: Node) -> None:
        """The first node's file holds the admin key; leading first, it seeds etcd with it."""
        node.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["--role", "admin", "--name", "ha-admin", "--data-dir", str(node.data_dir)]
        out = subprocess.run(
            [*GRIDPILOT, "keys", "create", *args, "--config", str(self.site_file)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        self.admin_key = next(
            line.split()[1] for line in out.stdout.splitlines() if line.startswith("key ")
        )

    def start(self, node: Node, env: dict[str, str] | None = None) -> Node:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.log = self.folder / f"{node.name}.log"
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "GRIDPILOT_HA__NODE": node.name,
            "GRIDPILOT_API_PORT": str(node.api_port),
            "GRIDPILOT_DATA_DIR": str(node.data_dir),
            **(env or {}),
        }
        node.proc = subprocess.Popen(
            [*GRIDPILOT, "run", "--config", str(self.site_file)],
            stdout=subprocess.DEVNULL,
            stderr=node.log.open("ab"),
            env=env,
        )
        node.peers = set()
        return node

    def api(self, node: Node) -> httpx.Client:
        auth = {"Authorization": f"Bearer {self.admin_key}"}
        return httpx.Client(base_url=node.base, headers=auth, timeout=3.0)

    def ha_state(self, node: Node) -> dict[str, Any] | None:
        """The node's `ha` part of /v1/state, or None while it does not answer."""
        try:
            with self.api(node) as api:
                r = api.get("/v1/state")
            return r.json().get("ha") if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def wait_leader(self, timeout_s: float = 60.0, among: list[Node] | None = None) -> Node:
        """The one node that says it leads and writes (fails if two ever do)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leading = []
            for n in among or list(self.nodes.values()):
                if n.alive() and (s := self.ha_state(n)) and s["role"] == "leader" and s["writing"]:
                    leading.append(n)
            assert len(leading) <= 1, f"two leaders: {[n.name for n in leading]}"
            if leading:
                return leading[0]
            time.sleep(0.1)
        raise AssertionError(f"no leader within {timeout_s} s; logs: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {n.name}:\n{n.log.read_text()[-3000:]}" for n in self.nodes.values() if n.log
        )

    def stop(self) -> None:
        for n in self.nodes.values():
            if n.proc is not None and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)  #: a frozen one cannot take SIGTERM
                n.proc.terminate()
        for n in self.nodes.values():
            if n.proc is not None:
                try:
                    n.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait(timeout=10)
        self.sim.stop()


def worst_ramp(grid: list[tuple[float, float]], window_s: float = 1.0) -> float:
    """The largest |Δgrid| between two samples `window_s` apart, W (per that window)."""
    worst, j = 0.0, 0
    for t, w in grid:
        while j < len(grid) and grid[j][0] < t + window_s:
            j += 1
        if j >= len(grid):
            break
        worst = max(worst, abs(grid[j][1] - w))
    return worst
