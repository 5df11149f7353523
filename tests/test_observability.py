"""Alerts, dashboards and the image, checked by their ecosystems' own tools: promtool checks
and unit-tests the alert rules and parses every dashboard expression; hadolint lints the
Dockerfile. No Prometheus or Grafana server runs here, so this is what can be checked."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controller.config import SiteConfig
from controller.service import Controller

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: `make test` installs it (Debian package prometheus)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def test_alert_rules_are_valid_and_their_unit_tests_pass():
    checked = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(PROMETHEUS / "alerts.test.yml"))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert len(alerts) == 13
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    tested = {a["alertname"] for t in tests for a in t.get("alert_rule_test", [])}
    assert tested == alerts
    for t in tests:  # each fires for a bad series: an empty expectation proves nothing
        assert all(a["exp_alerts"] for a in t["alert_rule_test"]), t["name"]


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def expressions() -> list[tuple[str, str]]:
    """(where, expr) of every dashboard target, with the $site variable as Grafana fills it."""
    found = []
    for path in DASHBOARDS:
        for p in panels(json.loads(path.read_text())):
            for t in p.get("targets", []):
                found.append((f"{path.name} #{p['id']} {t['refId']}", t["expr"]))
    return found


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path):
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    dash = json.loads(path.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(dash):
        box = p["gridPos"]
        assert box["x"] >= 0 and box["x"] + box["w"] <= 24 and box["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["title"] and p["datasource"]["uid"] == uid, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        assert all(t["datasource"]["uid"] == uid and t["expr"].strip() for t in p["targets"])
    titles = " ".join(p["title"] for p in panels(dash)).lower()
    for topic in ("grid", "state of charge", "frequency", "import cap", "coolant", "heat",
                  "tokens per joule", "pue", "erf", "tick"):  # fmt: skip
        assert topic in titles, topic


def test_every_dashboard_expression_parses(tmp_path: Path):
    """Written as recording rules, every expression goes through promtool's PromQL parser."""
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": expr.replace("$site", ".*")}
        for i, (_, expr) in enumerate(expressions())
    ]
    assert len(rules) > 20
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def exported_names(site: SiteConfig) -> set[str]:
    """Every sample name gridpilot's registry can export (counters with _total, histograms
    with _bucket, _sum and _count), from the registry of a controller as `run` builds it (with
    its recorder's and bridge's families), not from a list kept by hand."""
    names = set()
    controller = Controller(site)
    try:
        families = list(controller.metrics.registry.collect())
    finally:
        controller.close()
    for family in families:
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def test_alerts_and_dashboards_name_metrics_that_exist(site: SiteConfig):
    rules = (PROMETHEUS / "alerts.yml").read_text()
    named = set(re.findall(r"\bgridpilot_[a-z0-9_]+", rules))
    for _, expr in expressions():
        named |= set(re.findall(r"\bgridpilot_[a-z0-9_]+", expr))
    missing = named - exported_names(site)
    assert not missing, f"named but never exported: {sorted(missing)}"


def test_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
