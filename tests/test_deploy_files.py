"""Deployment files that cannot run here (no Docker engine) are at least consistent."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography import x509

from controller.service import Controller
from controller.sitefile import load_site, simulation_of

ROOT = Path(__file__).resolve().parents[1]


def test_compose_site_file_is_valid_and_points_at_the_plant_service():
    site = load_site(ROOT / "deploy" / "site.compose.yaml")
    assert {d.host for d in site.devices} == {"plant"}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    exposed = {int(p) for p in compose["services"]["plant"]["expose"]}
    assert exposed == {d.port for d in site.devices} | {simulation_of(site).inference_port}
    (source,) = site.token_sources  # the controller reads the plant's token endpoint
    assert source.url.host == "plant" and source.url.port == simulation_of(site).inference_port
    port = site.api_port
    assert compose["services"]["controller"]["ports"] == [
        f"${{GRIDPILOT_PUBLISH:-127.0.0.1}}:{port}:{port}"
    ]


def test_compose_publishes_on_loopback_unless_told_otherwise():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            assert mapping.startswith("${GRIDPILOT_PUBLISH:-127.0.0.1}:"), (name, mapping)


def test_the_image_serves_https_by_default_with_a_certificate_prometheus_trusts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """With the Dockerfile's and compose's environment, the controller makes its API
    certificate at first start for the name Prometheus scrapes it by, signed by the CA that
    Prometheus is told to trust."""
    env = dict(
        line.strip().rstrip("\\").strip().split("=", 1)
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip().startswith("GRIDPILOT_")
    )
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env.update(compose["services"]["controller"]["environment"])
    env["GRIDPILOT_API_TLS__AUTO_DIR"] = env["GRIDPILOT_API_TLS__AUTO_DIR"].replace(
        "/var/lib/gridpilot", str(tmp_path)
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    site = load_site(ROOT / "deploy" / "site.compose.yaml", {"data_dir": str(tmp_path)})
    controller = Controller(site)
    try:
        certificate, _ = controller.api_tls()  # type: ignore[misc]
    finally:
        controller.close()
    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "controller" in sans.get_values_for_type(x509.DNSName)
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["scheme"] == "https" and job["tls_config"]["ca_file"] == "/gridpilot/tls/ca.pem"
    assert "gridpilot-data:/gridpilot:ro" in compose["services"]["prometheus"]["volumes"]
    ca = x509.load_pem_x509_certificate((tmp_path / "tls" / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)


def test_compose_mounts_name_files_that_exist():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} missing"


def test_prometheus_scrapes_the_controller_service():
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = [
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert targets == ["controller:8080"]


def test_compose_runs_every_service_the_deployment_needs():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"plant", "controller", "prometheus", "grafana"}
    grafana = services["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana
    # Prometheus loads the alert rules from beside its config, as prometheus.yml names them.
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    mounted = {Path(v.split(":")[1]).name for v in services["prometheus"]["volumes"]}
    assert set(prom["rule_files"]) <= mounted
    dashboards = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/gridpilot.yml").read_text()
    )
    assert dashboards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_ha_compose_runs_two_controllers_on_three_etcd_members():
    compose = yaml.safe_load((ROOT / "deploy" / "ha.compose.yaml").read_text())
    services = compose["services"]
    site = load_site(ROOT / "deploy" / "site.ha.yaml")
    assert site.ha.enabled
    etcd = sorted(name for name in services if name.startswith("etcd-"))
    assert etcd == ["etcd-0", "etcd-1", "etcd-2"]
    assert sorted(site.ha.endpoints) == [f"{name}:2379" for name in etcd]
    members = services["etcd-0"]["environment"]["ETCD_INITIAL_CLUSTER"].split(",")
    assert sorted(m.split("=")[0] for m in members) == etcd
    controllers = [s for name, s in services.items() if name.startswith("controller-")]
    nodes = {s["environment"]["GRIDPILOT_HA__NODE"] for s in controllers}
    assert len(controllers) == 2 and len(nodes) == 2  # one site file, a name each
    for s in controllers:
        mounts = {v.split(":")[1]: v.split(":")[0] for v in s["volumes"]}
        assert (ROOT / "deploy" / mounts["/etc/gridpilot/site.yaml"]).resolve() == (
            ROOT / "deploy" / "site.ha.yaml"
        )
        assert set(s["depends_on"]) >= {"plant", *etcd}
        for mapping in s["ports"]:
            assert mapping.startswith("${GRIDPILOT_PUBLISH:-127.0.0.1}:")
    devices = {d.host for d in site.devices}
    assert devices == {"plant"} and "plant" in services
