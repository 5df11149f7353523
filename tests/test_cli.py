"""The command line as an operator meets it: help, the controller alone, signals, a taken port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.sitefile import load_site
from drivers.certs import make_site_certs
from tests.processes import GRIDPILOT, create_key, gridpilot, stop_cleanly, wait_http


def test_help_lists_the_commands():
    out = subprocess.run([*GRIDPILOT, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("demo", "run", "sim", "check-config", "replay", "size", "certs", "keys", "db"):
        assert command in out.stdout


def test_controller_alone_without_devices_serves_state_and_stops_on_sigterm(site_file: Path):
    """No plant behind the addresses: the controller runs, reports every device down, is not
    ready, and stops cleanly on SIGTERM."""
    site = load_site(site_file)
    base = f"http://127.0.0.1:{site.api_port}"
    key = {"Authorization": f"Bearer {create_key(str(site_file), 'viewer')}"}
    with gridpilot("run", "--config", str(site_file)) as proc:
        deadline = time.monotonic() + 60
        state = None
        assert_unauthorised = False
        while time.monotonic() < deadline:
            try:
                if not assert_unauthorised:  # no key, no state
                    assert httpx.get(f"{base}/v1/state", timeout=1).status_code == 401
                    assert_unauthorised = True
                state = httpx.get(f"{base}/v1/state", headers=key, timeout=1).json()
                if state["tick"] is not None:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert state and state["tick"] is not None, "no tick"
        assert state["mode"] == "degraded"
        assert not any(d["connected"] for d in state["devices"].values())
        assert httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        ready = httpx.get(f"{base}/readyz", timeout=1)
        assert ready.status_code == 503 and "control degraded" in ready.json()["detail"]
        stop_cleanly(proc, "controller stopped", signal.SIGTERM)


def test_a_taken_api_port_is_a_clear_error(site_file: Path):
    site = load_site(site_file)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", site.api_port))
        blocker.listen()
        out = subprocess.run(
            [*GRIDPILOT, "run", "--config", str(site_file)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{site.api_port}" in out.stderr
    assert "Traceback" not in out.stderr


def test_simulators_alone_serve_every_device_and_stop_on_sigterm(site_file: Path):
    """`gridpilot sim`: what docker-compose runs as the plant, read here by a plain client."""
    from pymodbus.client import ModbusTcpClient

    from drivers.maploader import load_map

    site = load_site(site_file)
    meter = next(d for d in site.devices if d.kind == "meter")
    devmap = load_map("meter")
    with gridpilot("sim", "--config", str(site_file)) as proc:
        deadline = time.monotonic() + 60
        client = ModbusTcpClient("127.0.0.1", port=meter.port, timeout=1, retries=0)
        while not client.connect():
            assert time.monotonic() < deadline and proc.poll() is None, "plant never came up"
            time.sleep(0.2)
        block = devmap.blocks[0]
        rr = client.read_holding_registers(block.address, count=block.count, device_id=1)
        client.close()
        values = devmap.decode_block(block, rr.registers)
        assert values["active_power_w"] > 1e6  # the site draws megawatts
        assert 49.5 < values["frequency_hz"] < 50.5
        stop_cleanly(proc, "simulators stopped", signal.SIGTERM)


def test_certs_makes_a_trust_domain_and_never_overwrites_it(tmp_path: Path):
    out = tmp_path / "pki"
    cmd = [*GRIDPILOT, "certs", "--out", str(out), "--host", "127.0.0.1", "--host", "plant.local"]
    made = subprocess.run(cmd, capture_output=True, text=True, timeout=60, umask=0)
    assert made.returncode == 0, made.stderr
    names = {"ca.pem", "device.pem", "device-key.pem", "controller.pem", "controller-key.pem"}
    names |= {"api.pem", "api-key.pem"}  # the HTTPS API's
    assert {p.name for p in out.iterdir()} == names
    # The keys are ours alone, and so is their folder, with no umask to help.
    keys = (out / "device-key.pem", out / "controller-key.pem", out / "api-key.pem")
    assert [p.stat().st_mode & 0o777 for p in (out, *keys)] == [0o700, 0o600, 0o600, 0o600]
    api = x509.load_pem_x509_certificate((out / "api.pem").read_bytes())
    usage = api.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    device = x509.load_pem_x509_certificate((out / "device.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    device.verify_directly_issued_by(ca)
    names_in = device.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "plant.local" in names_in.get_values_for_type(x509.DNSName)
    before = (out / "ca.pem").read_bytes()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already holds certificates" in again.stderr
    assert (out / "ca.pem").read_bytes() == before


def test_the_private_keys_are_never_readable_by_others(tmp_path: Path, monkeypatch):
    """Each key is made 0600 at once: one written readable to all and chmod'ed after could
    be opened in between (an open file stays readable after a chmod)."""

    def chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"chmod after creation: {args}")

    monkeypatch.setattr(os, "chmod", chmod)
    made = make_site_certs(tmp_path / "pki", ["127.0.0.1"])
    for key in (made.device.private_key, made.controller.private_key):
        assert key.stat().st_mode & 0o777 == 0o600


def test_setpoints_mode_and_events_survive_a_kill(site_file: Path):
    """Change setpoints, the mode and schedule an event; kill -9 the controller; a new one
    resumes with all three."""
    site = load_site(site_file)
    base = f"http://127.0.0.1:{site.api_port}"
    key = {"Authorization": f"Bearer {create_key(str(site_file), 'operator')}"}
    start = time.time() + 3600
    event = {"kind": "import_cap", "value_w": 7.5e6, "start_s": start, "end_s": start + 900}

    with gridpilot("run", "--config", str(site_file)) as proc:
        wait_http(f"{base}/healthz", proc)
        patch = {"ramp_up_w_per_s": 321000, "soc_target_low_ratio": 0.45}
        assert httpx.patch(f"{base}/v1/setpoints", json=patch, headers=key).status_code == 200
        assert httpx.post(f"{base}/v1/mode", json={"mode": "safe"}, headers=key).status_code == 200
        made = httpx.post(f"{base}/v1/events", json=event, headers=key)
        assert made.status_code == 201
        proc.kill()  # no clean shutdown: what was acknowledged must already be on disk
        proc.communicate()
    with gridpilot("run", "--config", str(site_file)) as proc:
        wait_http(f"{base}/healthz", proc)
        setpoints = httpx.get(f"{base}/v1/setpoints", headers=key).json()
        assert setpoints["ramp_up_w_per_s"] == 321000 and setpoints["soc_target_low_ratio"] == 0.45
        assert httpx.get(f"{base}/v1/mode", headers=key).json()["mode"] == "safe"
        (found,) = httpx.get(f"{base}/v1/events", headers=key).json()["events"]
        assert found["id"] == made.json()["id"] and found["value_w"] == 7.5e6
        stop_cleanly(proc, "controller stopped", signal.SIGTERM)


def test_keys_revoke_keeps_the_last_admin_key(site_file: Path):
    admin = create_key(str(site_file), "admin")
    revoke = [*GRIDPILOT, "keys", "revoke", admin.split("_")[1], "--config", str(site_file)]
    out = subprocess.run(revoke, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "last active admin key: make another admin key" in out.stderr
    create_key(str(site_file), "admin", "second")
    assert subprocess.run(revoke, capture_output=True, text=True, timeout=60).returncode == 0


def test_a_revoked_demo_key_stays_revoked_after_a_restart(site_file: Path):
    """The demo's key (GRIDPILOT_API_KEY) is made once, audited; revoked through the API, it
    stays revoked when the demo starts again with it (it used to come back active, with no
    audit entry), and the demo says so."""
    site = load_site(site_file)
    base = f"http://127.0.0.1:{site.api_port}"
    demo_key = "demo-key-an-operator-gave-0123456789"
    env = {"GRIDPILOT_API_KEY": demo_key}
    with gridpilot("demo", "--config", str(site_file), env=env) as proc:
        wait_http(f"{base}/healthz", proc)
        head = {"Authorization": f"Bearer {demo_key}"}
        second = httpx.post(f"{base}/v1/keys", json={"name": "second", "role": "admin"},
                            headers=head).json()  # fmt: skip
        keys = httpx.get(f"{base}/v1/keys", headers=head).json()["keys"]
        demo_id = next(k["id"] for k in keys if k["name"] == "demo-admin")
        other = {"Authorization": f"Bearer {second['key']}"}
        assert httpx.delete(f"{base}/v1/keys/{demo_id}", headers=other).status_code == 200
        stop_cleanly(proc, "simulators stopped")
    with gridpilot("demo", "--config", str(site_file), env=env) as proc:
        wait_http(f"{base}/healthz", proc)
        assert httpx.get(f"{base}/v1/mode", headers=head).status_code == 401
        log = httpx.get(f"{base}/v1/audit", params={"limit": 100}, headers=other).json()
        stderr = stop_cleanly(proc, "simulators stopped")
    made = [
        (e["key_name"], e["new"]["name"]) for e in log["entries"] if e["action"] == "key.create"
    ]
    assert made == [("demo-admin", "second"), ("demo", "demo-admin")]  # newest first
    assert [e["old"]["id"] for e in log["entries"] if e["action"] == "key.revoke"] == [demo_id]
    assert "GRIDPILOT_API_KEY not used" in stderr and "stays revoked" in stderr
