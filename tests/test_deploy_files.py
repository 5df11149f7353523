"""Deployment files that cannot run here (no Docker engine) are at least consistent."""

from __future__ import annotations

from pathlib import Path

import yaml

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
    assert compose["services"]["controller"]["ports"] == [f"{site.api_port}:{site.api_port}"]


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
