"""Site configuration: valid files load, every kind of bad value is named, the CLI exits 2."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from controller.config import ConfigError
from controller.sitefile import load_site, parse_site, simulation_of
from tests.processes import GRIDPILOT


def test_builtin_site_is_the_demo_site():
    site = load_site()
    assert [d.id for d in site.devices] == ["ups-a", "ups-b", "bess-1", "meter-1", "cdu-1"]
    assert len(site.devices_of("ups")) == 2
    assert site.loop_period_s == 0.1
    plant = simulation_of(site)
    assert plant.gpus == 10_000 and plant.base_w == 2e6


def test_valid_file_loads(site_file: Path, site_data: dict):
    site = load_site(site_file)
    assert site.api_port == site_data["api_port"]
    assert site.devices[0].port == site_data["modules"][0]["devices"][0]["port"]


def test_environment_overrides_the_file(site_file: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GRIDPILOT_LOOP_PERIOD_S", "0.02")
    monkeypatch.setenv("GRIDPILOT_DISPATCH__RAMP_UP_W_PER_S", "250000")
    site = load_site(site_file)
    assert site.loop_period_s == 0.02
    assert site.dispatch.ramp_up_w_per_s == 250000
    assert site.dispatch.ramp_down_w_per_s == 500000  # untouched


def _set(data: dict, path: str, value: object) -> dict:
    data = copy.deepcopy(data)
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("loop_period_s", -0.1, "loop_period_s"),
        ("loop_period_s", "fast", "loop_period_s"),
        ("api_port", 70000, "api_port"),
        ("dispatch.ramp_up_w_per_s", -5, "dispatch.ramp_up_w_per_s"),
        ("dispatch.lowpass_tau_s", float("nan"), "dispatch.lowpass_tau_s"),
        ("dispatch.ramp_up_w_per_s", 5e-324, "dispatch.ramp_up_w_per_s"),  # > 0, yet no limit
        ("dispatch.droop", 5e-324, "dispatch.droop"),
        ("dispatch.soc_return_s", 5e-324, "dispatch.soc_return_s"),
        ("dispatch.energy_return_s", 5e-324, "0 (off) or at least 1 s"),
        ("dispatch.charge_efficiency", 5e-324, "dispatch.charge_efficiency"),
        ("dispatch.import_cap_w", 5e-324, "dispatch.import_cap_w"),
        ("dispatch.soc_min_ratio", 0.99, "soc_min_ratio"),
        ("modules.0.devices.0.kind", "toaster", "modules.0.devices.0.kind"),
        ("modules.0.devices.0.port", 0, "modules.0.devices.0.port"),
        ("modules.0.devices.0.id", "UPS A!", "modules.0.devices.0.id"),
        ("modules.0.devices.0.timeout_s", 0, "modules.0.devices.0.timeout_s"),
        ("modules.0.devices.0.stale_after_s", 0.01, "stale_after_s"),
        ("modules.0.devices.0.colour", "red", "colour"),
        ("simulation.gpus", -1, "simulation.gpus"),
        ("simulation.initial_soc_ratio", 1.5, "simulation.initial_soc_ratio"),
        ("modules.1.devices.0.id", "ups-a", "unique"),
        ("modules.1.devices.0.port", None, "modules.1.devices.0.port"),
        ("cooling.water_class", "W60", "cooling.water_class"),
        ("cooling.min_supply_c", 33, "below the W32 maximum"),
        ("token_sources.0.url", "not a url", "token_sources.0.url"),
    ],
)
def test_each_bad_value_is_named(site_data: dict, path: str, value: object, named: str):
    bad = _set(site_data, path, value)
    if path == "cooling.min_supply_c":
        bad["cooling"]["water_class"] = "W32"
    with pytest.raises(ConfigError) as err:
        parse_site(bad)
    assert named in str(err.value)


def test_two_devices_on_one_address_rejected(site_data: dict):
    bad = _set(site_data, "modules.1.devices.0.port", site_data["modules"][0]["devices"][0]["port"])
    with pytest.raises(ConfigError, match="share an address"):
        parse_site(bad)


def test_site_needs_one_meter(site_data: dict):
    bad = copy.deepcopy(site_data)
    bad["modules"][2]["devices"] = [d for d in bad["modules"][2]["devices"] if d["kind"] != "meter"]
    with pytest.raises(ConfigError, match="exactly one grid meter"):
        parse_site(bad)


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_site(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("modules: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_site(broken)


def test_cli_rejects_bad_file_with_status_2_and_no_traceback(tmp_path: Path, site_data: dict):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_set(site_data, "dispatch.ramp_down_w_per_s", -1)))
    proc = subprocess.run(
        [*GRIDPILOT, "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "dispatch.ramp_down_w_per_s" in proc.stderr and "-1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_check_config_lists_devices(site_file: Path):
    proc = subprocess.run(
        [*GRIDPILOT, "check-config", str(site_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ups-a" in proc.stdout and "cdu-1" in proc.stdout


def _device(data: dict, device_id: str) -> dict:
    return next(d for m in data["modules"] for d in m["devices"] if d["id"] == device_id)


def _vendor_map_without_soc(tmp_path: Path) -> Path:
    """The shipped BESS map as a vendor file, its SoC point no longer bound to a role."""
    text = (Path(__file__).parents[1] / "drivers/maps/bess.yaml").read_text()
    path = tmp_path / "vendor-bess.yaml"
    path.write_text(text.replace("role: soc,", ""))
    return path


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # A UPS given the meter's map: it was taken for the grid meter, and ran on it.
        (lambda d, _: _device(d, "ups-b").update(map="meter"),
         "device ups-b is a ups, but its map drivers/maps/meter.yaml describes a meter"),
        (lambda d, _: _device(d, "ups-b").update(map="upss"), "device ups-b: no map 'upss'"),
        (lambda d, tmp: _device(d, "bess-1").update(map=str(_vendor_map_without_soc(tmp))),
         "a bess map needs a point for each of the roles ['soc']"),
        (lambda d, _: d.setdefault("cooling", {}).update(pump_control="pressure")
         or _device(d, "cdu-1").update(map="cdu"), None),  # the shipped CDU map has ΔP: fine
    ],
)  # fmt: skip
def test_check_config_loads_every_map_and_refuses_a_bad_one_before_start(
    tmp_path: Path, site_data: dict, change, expected: str | None
):
    data = copy.deepcopy(site_data)
    change(data, tmp_path)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        if expected is None and command[0] == "run":
            continue  # a good site would start and run: check-config is enough here
        proc = subprocess.run([*GRIDPILOT, *command], capture_output=True, text=True, timeout=60)
        if expected is None:
            assert proc.returncode == 0, proc.stderr
            continue
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert expected in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_key_given_twice_in_a_site_file_is_refused(tmp_path: Path, site_file: Path):
    path = tmp_path / "twice.yaml"
    path.write_text(site_file.read_text() + "loop_period_s: 0.05\n")
    with pytest.raises(ConfigError, match=r"(?s)not valid YAML.*'loop_period_s' twice"):
        load_site(path)


def test_the_config_and_the_maps_know_the_same_kinds():
    from typing import get_args

    from controller.config import DeviceKind
    from drivers.kinds import KINDS

    assert set(get_args(DeviceKind)) == set(KINDS)


def test_a_port_offset_moves_every_port_a_second_demo_needs():
    base, moved = load_site(), load_site(port_offset=100)
    assert moved.api_port == base.api_port + 100
    assert [d.port for d in moved.devices] == [d.port + 100 for d in base.devices]
    port = simulation_of(base).inference_port
    assert simulation_of(moved).inference_port == port + 100
    assert [t.url.port for t in moved.token_sources] == [port + 100]


def test_a_site_level_error_does_not_print_the_site(tmp_path: Path, site_data: dict):
    """A rule across the site (two meters) names the rule, not the whole parsed file, which
    may hold passwords."""
    data = copy.deepcopy(site_data)
    data["modules"][0]["devices"][0]["kind"] = "meter"
    data["modules"][0]["devices"][0]["map"] = "meter"
    with pytest.raises(ConfigError) as err:
        parse_site(data)
    assert "exactly one grid meter" in str(err.value)
    assert "modules" not in str(err.value) and len(str(err.value)) < 300


def test_the_documented_environment_variables_work(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """The README's table of variables, each as written there."""
    for name, value in {
        "GRIDPILOT_API_PORT": "9000",
        "GRIDPILOT_DATA_DIR": str(tmp_path),
        "GRIDPILOT_COOLING__WATER_CLASS": "W40",
        "GRIDPILOT_BACKUP__DIR": str(tmp_path / "backups"),
        "GRIDPILOT_LIMITS__MAX_PENDING_EVENTS": "200",
        "GRIDPILOT_NOTICES__POWER_W_PER_GPU": "1000",
        "GRIDPILOT_API_LIMITS__WRITES_PER_S": "20",
        "GRIDPILOT_API_TLS__AUTO_DIR": str(tmp_path / "tls"),
        "GRIDPILOT_API_TLS__ENABLED": "false",
        "GRIDPILOT_TOKEN_SOURCES": '[{"id": "vllm-0", "url": "http://vllm:8000/metrics"}]',
    }.items():
        monkeypatch.setenv(name, value)
    site = load_site()
    assert (site.api_port, site.data_dir, site.cooling.water_class) == (9000, tmp_path, "W40")
    assert site.backup.dir == tmp_path / "backups"
    assert site.limits.max_pending_events == 200
    assert site.notices.power_w_per_gpu == 1000
    assert site.api_limits.writes_per_s == 20
    assert site.api_tls is not None and not site.api_tls.enabled  # TLS ends in front
    assert [str(t.url) for t in site.token_sources] == ["http://vllm:8000/metrics"]


SECRET = "hunter2-never-shown"
SECRET_NUMBER = 86753090  # a password YAML reads as a number


def _secured(data: dict, security: object) -> dict:
    """The site with its first device's `security` as given."""
    data = copy.deepcopy(data)
    data["modules"][0]["devices"][0]["security"] = security
    return data


def _tls(pem: Path, **more: object) -> dict:
    return {"certificate": str(pem), "private_key": str(pem), **more}


@pytest.mark.parametrize(
    ("write", "named"),
    [
        (lambda d, pem: _secured(d, _tls(pem, username="gp", passwd=SECRET)),
         "security.passwd: Extra inputs are not permitted"),
        (lambda d, pem: _secured(d, SECRET),
         "modules.0.devices.0.security: Input should be a valid dictionary"),
        (lambda d, pem: _secured(d, _tls(pem, username="gp", password=SECRET,
                                         password_file=str(pem))),
         "give password or password_file, not both"),
        (lambda d, pem: d | {"simulation": {**d["simulation"], "security": _tls(
            pem, client_ca=str(pem), users={"gp": SECRET_NUMBER})}},
         "simulation.security.users.gp: Input should be a valid string"),
        (lambda d, pem: yaml.safe_dump(_secured(d, _tls(pem, username="gp", password="PLACE")))
         .replace("password: PLACE", f'password: "{SECRET}'),
         "not valid YAML: while scanning a quoted scalar (line"),
    ],
)  # fmt: skip
def test_check_config_never_shows_a_password(tmp_path: Path, site_data: dict, write, named: str):
    """Errors name the field and what is wrong, never a value sent near a secret: pydantic
    (and PyYAML, quoting the line) would show a misspelt key's password as written."""
    pem = tmp_path / "controller.pem"
    pem.write_text("read only once the site starts\n")
    path = tmp_path / "site.yaml"
    written = write(site_data, pem)
    path.write_text(written if isinstance(written, str) else yaml.safe_dump(written))
    proc = subprocess.run(
        [*GRIDPILOT, "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stdout
    assert named in proc.stderr
    shown = proc.stdout + proc.stderr
    assert SECRET not in shown and str(SECRET_NUMBER) not in shown and "Traceback" not in shown
