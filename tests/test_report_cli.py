"""`gridpilot report` as an operator runs it: a replay's run judged against a shipped and a
strict profile, JSON and a page, bad inputs refused with status 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.replay.record import record_run
from controller.replay.run import ReplaySettings, simulate
from controller.replay.trace import read_trace

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT / "drivers" / "sim" / "traces" / "h200_train_1p7b.csv"


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A replay of the training trace, written as the recorder writes (from 2026-11-30)."""
    data = tmp_path_factory.mktemp("replayed")
    trace = read_trace(TRAINING)
    settings = ReplaySettings()
    run = simulate(trace.site_load_w(settings.gpus, settings.base_w), trace.dt_s, settings)
    record_run(run, trace.dt_s, settings, data, start_s=1_795_996_800.0)
    return data


def report(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(app, ["report", *args])
    return out.exit_code, out.output


def test_a_smoothed_run_passes_the_generic_profile_and_a_page_is_written(
    replayed: Path, tmp_path: Path
):
    page = tmp_path / "report.html"
    status, out = report("--data-dir", str(replayed), "--json", "--html", str(page))
    assert status == 0, out
    result = json.loads(out)
    assert result["result"] == "pass" and "plots" not in result
    passed = {c["name"] for c in result["checks"] if c["result"] == "pass"}
    assert "attenuation of the IT load in 0.1-20 Hz" in passed  # -22.8 dB against -15
    assert page.read_text().count("<svg") >= 4
    # a range given in ISO 8601 (UTC): 20 s of the 76 s
    status, out = report("--data-dir", str(replayed), "--json", "--from", "2026-11-30T00:00:10",
                         "--to", "2026-11-30T00:00:30Z")  # fmt: skip
    assert status == 0, out
    span = json.loads(out)["range"]
    assert span["rows"] == 200 and span["from_s"] == pytest.approx(1_795_996_810.0)


def test_a_profile_the_run_breaks_fails_with_status_1(replayed: Path, tmp_path: Path):
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        "name: strict\nramp_1s_max_w: 100000  # tighter than the run's 500 kW/s\n"
        "band_attenuation_max_db: -30  # deeper than the run's -22.8 dB\n"
    )
    status, out = report("--data-dir", str(replayed), "--json", "--profile", str(strict))
    assert status == 1
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["ramp over 1 s"]["result"] == "fail"
    assert checks["ramp over 1 s"]["measured"] == pytest.approx(5e5)
    assert 0 < checks["ramp over 1 s"]["held_ratio"] < 1
    attenuation = checks["attenuation of the IT load in 0.1-20 Hz"]
    assert attenuation["result"] == "fail" and attenuation["measured"] == pytest.approx(
        -22.81, abs=0.01
    )
    status, out = report("--data-dir", str(replayed), "--profile", str(strict))
    assert status == 1 and "fail" in out  # the terminal's table says it too


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "yesterday"], "ISO 8601"),
        (["--from", "1795996830", "--to", "1795996810"], "must be before"),
        (["--from", "nan"], "out of range"),
        (["--profile", "/no/such/profile.yaml"], "/no/such/profile.yaml"),
        (["--profile", "large-load"], "large-load"),
    ],
)
def test_bad_inputs_exit_2_saying_what(replayed: Path, args: list[str], says: str):
    status, out = report("--data-dir", str(replayed), *args)
    assert status == 2 and says in out


def test_a_folder_without_recorder_data_exits_2(tmp_path: Path):
    page = tmp_path / "page.html"
    status, out = report("--data-dir", str(tmp_path), "--html", str(page))
    assert status == 2 and "no recorder data" in out
    assert not page.exists()
