"""Disturbance captures through the running site: a scripted frequency dip makes one capture,
listed by the API, whose COMTRADE files an independent reader (the `comtrade` package) reads
back with the recorder's samples; operators ask for one; viewers cannot."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import comtrade
import numpy as np
import pytest

from controller.cli_common import CLI
from controller.recorder.captures import CAPTURES_DIR
from controller.recorder.reader import RECORDER_DIR, read_table
from tests.plant import modbus_only, site_running

WINDOW_S = 2.0  # before and after the trigger


def with_dip(site_data: dict, at_s: float | None) -> dict:
    data = copy.deepcopy(site_data)
    data["recorder"] = {"captures": {"pre_s": WINDOW_S, "post_s": WINDOW_S}}
    if at_s is not None:  # the meter's frequency falls by 0.3 Hz: past the 0.1 Hz threshold
        dip = {"at_s": at_s, "depth_hz": -0.3, "fall_s": 0.3, "hold_s": 1.0, "recover_s": 0.3}
        data["simulation"]["frequency_events"] = [dip]
    return data


async def captures_of(api, cause: str) -> list[dict]:
    listed = (await api.get("/v1/captures")).json()["captures"]
    return [c for c in listed if c["cause"] == cause]


async def listed_soon(api, cause: str, timeout_s: float) -> list[dict]:
    """The captures of `cause` as soon as one is listed (or none, when time is up)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (found := await captures_of(api, cause)):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    return found


async def test_a_frequency_dip_makes_one_capture_an_independent_reader_reads(
    site_data: dict, tmp_path: Path
):
    # The dip at 8 s (the simulator's clock): its 2 s before fall where the controller is
    # already ticking, however slow its start (at 4 s, a cold first test had 35 rows of 36).
    site = modbus_only(with_dip(site_data, at_s=8.0))
    async with site_running(site) as run:
        found = await listed_soon(run.api, "frequency_excursion", 20.0)  # dip at 8 s, +2 s
        assert len(found) == 1, found
        cap = found[0]
        files = {}
        for part in ("cfg", "dat"):
            got = await run.api.get(f"/v1/captures/{cap['id']}/{part}")
            assert got.status_code == 200
            files[part] = tmp_path / f"{cap['id']}.{part}"
            files[part].write_bytes(got.content)
        assert (await run.api.get(f"/v1/captures/{cap['id']}/zip")).status_code == 422
        assert (await run.api.get("/v1/captures/20990101T000000.000Z-alarm/cfg")).status_code == 404
        assert (await run.api.get("/v1/captures/..%2Fgridpilot/cfg")).status_code in (404, 422)
        # the report over the capture's window finds the dip and lists the capture
        window = {"from": str(cap["from_s"]), "to": str(cap["to_s"] + 0.05)}
        got = await run.api.get("/v1/report", params=window)
        assert got.status_code == 200, got.text
        report = got.json()
        assert report["range"]["rows"] >= cap["rows"]
        (dip,) = report["events"]["frequency"]
        assert dip["direction"] == "under" and dip["extreme_hz"] < 50.0 - 0.1
        assert [c["id"] for c in report["events"]["captures"]] == [cap["id"]]
        for bad in ({"from": "10", "to": "5"}, {"profile": "strict"}, {"to": "soon"}):
            assert (await run.api.get("/v1/report", params=bad)).status_code == 422, bad
        await run.scrape()
        assert run.metric("gridpilot_captures_total", cause="frequency_excursion") == 1
        assert run.metric("gridpilot_recorder_rows_total") >= cap["rows"]
    on_disk = site.data_dir / CAPTURES_DIR
    assert (on_disk / f"{cap['id']}.cfg").read_bytes() == files["cfg"].read_bytes()
    assert cap["trigger_s"] - cap["from_s"] == pytest.approx(WINDOW_S)
    assert cap["to_s"] - cap["trigger_s"] == pytest.approx(WINDOW_S)
    rows = read_table(site.data_dir / RECORDER_DIR, cap["from_s"], cap["to_s"])
    assert rows is not None and rows.num_rows == cap["rows"] >= 1.8 * WINDOW_S / site.loop_period_s

    record = comtrade.Comtrade()
    record.load(str(files["cfg"]), str(files["dat"]), use_double_precision=True,
                use_numpy_arrays=True)  # fmt: skip
    assert record.station_name == site.name
    assert record.total_samples == rows.num_rows
    times = rows.column("time_s").to_numpy()
    np.testing.assert_allclose(np.asarray(record.time), times - times[0], atol=2e-6)
    names = record.analog_channel_ids
    frequency = np.asarray(record.analog[names.index("frequency_hz")])
    np.testing.assert_allclose(frequency, rows.column("frequency_hz").to_numpy(), atol=1e-4)
    # The dip is in it (a tick before the meter's first reading has none: NaN, as recorded).
    assert np.nanmin(frequency) < 50.0 - 0.1
    grid = np.asarray(record.analog[names.index("grid_w")])
    np.testing.assert_allclose(grid, rows.column("grid_w").to_numpy(), atol=200.0)


async def test_an_operator_asks_for_a_capture_and_a_viewer_cannot(site_data: dict):
    site = modbus_only(with_dip(site_data, at_s=None))
    async with site_running(site) as run:
        _, viewer_key = run.controller.db.create_key("viewer", "viewer", CLI)
        viewer = {"Authorization": f"Bearer {viewer_key}"}
        refused = await run.api.post("/v1/captures", json={"reason": "x"}, headers=viewer)
        assert refused.status_code == 403
        for bad in ({}, {"reason": ""}, {"reason": "a\nb"}, {"reason": "x", "extra": 1}):
            assert (await run.api.post("/v1/captures", json=bad)).status_code == 422, bad
        asked = await run.api.post("/v1/captures", json={"reason": "ramp test at 14:00"})
        assert asked.status_code == 202, asked.text
        assert asked.json()["post_s"] == WINDOW_S
        listed = await listed_soon(run.api, "operator", 10.0)
        assert len(listed) == 1
        assert listed[0]["detail"] == "ramp test at 14:00"
        assert listed[0]["requested_by"].startswith("test-operator (")
        seen = (await run.api.get("/v1/captures", headers=viewer)).json()["captures"]
        assert [c["id"] for c in seen if c["cause"] == "operator"] == [listed[0]["id"]]
        assert "test-operator" not in str(seen)  # a viewer sees that a key asked, not which
        audit = (await run.api.get("/v1/audit")).json()["entries"]
        assert audit[0]["action"] == "capture.request"
        assert audit[0]["new"] == {"reason": "ramp test at 14:00"}
