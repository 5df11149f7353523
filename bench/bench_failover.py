"""Fail-over of an HA pair, measured at the plant: kill -9 the leader, N times.

A real etcd cluster (three members on loopback, Debian's etcd), the simulated plant in this
process, and two `gridpilot run` processes on one site file (TTL 2 s, margin 0.3 s). Each run:
an operator change is made on the leader and acknowledged; the leader is killed (SIGKILL, or
SIGSTOP with --freeze); the time until the standby's first write lands at the plant is the
fail-over time; the killed node is started again as the new standby. Printed, one line each:
fail-over p50 and max (s); writes that landed at the plant from the old leader after the new
leader's first (a count: the fence); acknowledged changes the new leader did not have (a count);
and the ramp, measured at the simulated meter over 1 s windows, around the switch: in the gap
(no one writes: the devices hold their last setpoints until their watchdog) and from the new
leader's first write on (resumed from the measured grid: no jump).

    python bench/bench_failover.py [--runs 20] [--freeze]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.etcd import etcd_cluster
from tests.hapair import HaSite, Node, worst_ramp

AFTER_S = 5.0  # the ramp is watched this long after the new leader's first write


def one_run(site: HaSite, leader: Node, standby: Node, run: int, freeze: bool) -> dict:
    value = 300_000 + 1_000 * run  # a change only this run makes
    with site.api(leader) as api:
        r = api.patch("/v1/setpoints", json={"ramp_down_w_per_s": value})
        assert r.status_code == 200, r.text
    leader.see_connections()
    leader.proc.send_signal(signal.SIGSTOP if freeze else signal.SIGKILL)
    killed = time.monotonic()
    while (first := site.first_write(standby, killed)) is None:
        if time.monotonic() > killed + 30:
            raise SystemExit(f"run {run}: no fail-over in 30 s\n{site.logs()}")
        time.sleep(0.01)
    time.sleep(AFTER_S)
    if freeze:
        leader.proc.send_signal(signal.SIGCONT)
        time.sleep(2.0)
    late = [w for w in site.writes(first.at) if w.peer in leader.see_connections()]
    with site.api(standby) as api:
        kept = api.get("/v1/setpoints").json()["ramp_down_w_per_s"] == value
    leader.proc.kill()
    leader.proc.wait(timeout=10)
    return {
        "failover_s": first.at - killed,
        "late_writes": len(late),
        "lost": 0 if kept else 1,
        "before_ramp_w": worst_ramp(site.grid(killed - 6.0, killed)),  # control as usual
        "gap_ramp_w": worst_ramp(site.grid(killed - 1.0, first.at)),
        "after_ramp_w": worst_ramp(site.grid(first.at, first.at + AFTER_S)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--freeze", action="store_true", help="SIGSTOP the leader, not kill")
    args = parser.parse_args()
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp, etcd_cluster(Path(tmp) / "etcd") as etcd:
        site = HaSite(Path(tmp), etcd)
        site.start_plant()
        limit = site.site.dispatch.ramp_up_w_per_s
        try:
            a, b = site.node("a"), site.node("b")
            site.create_admin_key(a)
            site.start(a)
            leader = site.wait_leader()
            standby = site.start(b)
            site.wait_leader()
            time.sleep(5.0)  # the standby warm
            results = []
            for run in range(args.runs):
                r = one_run(site, leader, standby, run, args.freeze)
                results.append(r)
                print(
                    f"run {run + 1:2}: fail-over {r['failover_s']:.2f} s, late writes "
                    f"{r['late_writes']}, lost {r['lost']}, ramp before "
                    f"{r['before_ramp_w'] / 1e3:.0f} kW/s, in the gap "
                    f"{r['gap_ramp_w'] / 1e3:.0f} kW/s, after {r['after_ramp_w'] / 1e3:.0f} kW/s",
                    flush=True,
                )
                leader, standby = standby, site.start(leader)
                site.wait_leader(among=[leader])
                time.sleep(5.0)  # the new standby warm (its file loaded, following)
        finally:
            site.stop()
    times = [r["failover_s"] for r in results]
    after = max(r["after_ramp_w"] for r in results)
    gap = max(r["gap_ramp_w"] for r in results)
    before = max(r["before_ramp_w"] for r in results)
    print(f"fault: {'SIGSTOP' if args.freeze else 'SIGKILL'} of the leader, {len(results)} runs")
    print(f"failover p50 {statistics.median(times):.2f} s, max {max(times):.2f} s")
    print(f"writes after fencing: {sum(r['late_writes'] for r in results)}")
    print(f"changes lost: {sum(r['lost'] for r in results)}")
    print(
        f"ramp held after the new leader's first write: {after <= limit * 1.05} "
        f"(worst {after / 1e3:.0f} kW over 1 s, limit {limit / 1e3:.0f} kW/s); "
        f"in the gap (no writes; the devices hold the last setpoints): worst {gap / 1e3:.0f} kW "
        f"over 1 s; in the 6 s before each fault (control as usual): worst {before / 1e3:.0f} kW"
    )


if __name__ == "__main__":
    main()
