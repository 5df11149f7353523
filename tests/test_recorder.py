"""The high-rate recorder: every tick of the running controller on disk, readable while it is
written, bounded, and nothing lost but the last second when the process is killed."""

from __future__ import annotations

import math
import signal
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import yaml

from controller.config import RecorderConfig
from controller.recorder import rows
from controller.recorder.files import CLOSED, OPEN, PartitionWriter, partitions, remove_old
from controller.recorder.reader import (
    RECORDER_DIR,
    read_meta,
    read_table,
    read_tables,
    recent_columns,
)
from controller.recorder.recorder import Recorder
from controller.sitefile import load_site
from tests.plant import controller_running, modbus_only, until
from tests.processes import gridpilot, wait_http
from tests.sites import site_dict

ASSETS = ("ups-a", "bess-1")
T0 = 1_764_000_000.0  # a whole multiple of 600 s: partitions start on it


def synthetic(first_seq: int, n: int, period_s: float = 0.1, t0: float = T0) -> list[tuple]:
    """Rows as a tick makes them: a 1 Hz swing on the grid, NaN where a value is unknown."""
    width = len(rows.SITE_COLUMNS) + len(rows.asset_columns(ASSETS))
    out = []
    for i in range(first_seq, first_seq + n):
        values = [float(i)] * width
        values[rows.SITE_COLUMNS.index("grid_w")] = 5e6 + 1e5 * math.sin(2 * math.pi * i * period_s)
        values[rows.SITE_COLUMNS.index("import_cap_w")] = math.nan
        out.append((t0 + (i - 1) * period_s, i, "auto", *values))
    return out


def test_partitions_roll_over_on_their_boundaries_and_compact_to_parquet(tmp_path: Path):
    files = PartitionWriter(tmp_path, rows.schema(ASSETS), partition_s=10.0)
    for start in range(1, 251, 10):  # 25 s of rows at 10 Hz, handed over a second at a time
        files.append(rows.batch(synthetic(start, 10), ASSETS))
    parts = partitions(tmp_path)
    assert [p.path.suffix for p in parts] == [CLOSED, CLOSED, OPEN]
    assert [p.start_s - T0 for p in parts] == pytest.approx([0.0, 10.0, 20.0])
    files.close()
    assert [p.path.suffix for p in partitions(tmp_path)] == [CLOSED] * 3
    table = read_table(tmp_path)
    assert table is not None and table.column("seq").to_pylist() == list(range(1, 251))
    assert math.isnan(table.column("import_cap_w")[0].as_py())
    # a range: [from, to), across a boundary, only the columns asked for
    part = read_table(tmp_path, T0 + 9.5, T0 + 10.5, ["grid_w", "bess-1.soc", "absent.soc"])
    assert part is not None and part.column_names == [
        "time_s",
        "grid_w",
        "bess-1.soc",
        "absent.soc",
    ]
    assert part.column("time_s").to_pylist() == pytest.approx([T0 + i / 10 for i in range(95, 105)])
    assert part.column("absent.soc").null_count == 10


def test_recent_columns_come_at_a_coarser_step_and_nan_as_null(tmp_path: Path):
    files = PartitionWriter(tmp_path, rows.schema(ASSETS), partition_s=10.0)
    files.append(rows.batch(synthetic(1, 250), ASSETS))
    past = recent_columns(tmp_path, T0 + 5.0, T0 + 25.0, ["grid_w", "import_cap_w"], 60)
    assert past["time_s"] == pytest.approx([T0 + 5.0 + 0.4 * i for i in range(50)])  # every 4th
    assert past["import_cap_w"] == [None] * 50  # NaN: unknown, as JSON has it
    assert past["grid_w"][0] == pytest.approx(5e6 + 1e5 * math.sin(2 * math.pi * 51 * 0.1))
    empty = recent_columns(tmp_path / "none", 0.0, 1.0, ["grid_w"], 60)
    assert empty == {"time_s": [], "grid_w": []}


def test_old_partitions_go_by_age_then_by_size(tmp_path: Path):
    files = PartitionWriter(tmp_path, rows.schema(ASSETS), partition_s=10.0)
    for start in range(1, 501, 10):
        files.append(rows.batch(synthetic(start, 10), ASSETS))
    files.close()
    assert len(partitions(tmp_path)) == 5
    removed = remove_old(tmp_path, keep_after_s=T0 + 20.5, max_bytes=10**9)
    assert len(removed) == 2  # ended at +10 and +20 s: before the time kept
    sizes = [p.path.stat().st_size for p in partitions(tmp_path)]
    remove_old(tmp_path, keep_after_s=0.0, max_bytes=sum(sizes[1:]))
    left = partitions(tmp_path)
    assert [p.start_s - T0 for p in left] == pytest.approx([30.0, 40.0])
    first = next(read_tables(tmp_path))
    assert first.column("seq")[0].as_py() == 301


def test_a_failing_disk_holds_the_rows_and_writes_each_once_when_it_works_again(tmp_path: Path):
    folder = tmp_path / "recorder"
    cfg = RecorderConfig(partition_s=600.0)
    rec = Recorder(folder, cfg, {"format": 1, "site": "t", "assets": list(ASSETS)})
    try:
        rec._rows = synthetic(1, 10)
        assert rec.flush()
        stash = tmp_path / "away"
        folder.rename(stash)  # the folder is gone: writes fail with an OSError
        # half into the open file (its descriptor still works), half into a new partition,
        # which cannot be made: tried again, the batch writes each row once
        rec._rows = synthetic(11, 10, t0=T0 + 598.5)
        rec.hand_over()
        assert not rec.writer.flush(timeout_s=0.5)
        assert rec.writer.failing and rec.writer.failures_total >= 1
        stash.rename(folder)
        assert rec.flush()
        assert not rec.writer.failing
    finally:
        rec.close()
    table = read_table(folder)
    assert table is not None and table.column("seq").to_pylist() == list(range(1, 21))
    assert read_meta(folder)["assets"] == list(ASSETS)
    # what the fault cut short was compacted once the disk worked again; no stray files
    assert [p.path.suffix for p in partitions(folder)] == [CLOSED, CLOSED]
    assert sorted(f.suffix for f in folder.iterdir()) == [".json", CLOSED, CLOSED]


async def test_every_tick_of_the_running_controller_is_recorded(site_data: dict):
    site = modbus_only(site_data)
    folder = site.data_dir / RECORDER_DIR
    async with controller_running(site) as (_, records, controller):
        await until(lambda: len(records) > 25, 10, "25 ticks")
        assert controller.recorder is not None
        await until(lambda: controller.recorder.rows_total >= 10, 5, "rows on disk")
        live = read_table(folder)  # while it is written
        assert live is not None
        await until(lambda: len(records) > live.num_rows + 10, 5, "more ticks")
    on_disk = read_table(folder)
    assert on_disk is not None
    assert all(p.path.suffix == CLOSED for p in partitions(folder))  # compacted at the stop
    seqs = on_disk.column("seq").to_pylist()
    assert seqs == [r.seq for r in records]  # every tick, none twice, in order
    assert live.column("seq").to_pylist() == seqs[: live.num_rows]
    by_seq = {r.seq: r for r in records}
    for row in on_disk.slice(5).to_pylist()[:50]:
        rec = by_seq[row["seq"]]
        assert row["time_s"] == rec.wall_time and row["mode"] == rec.mode
        assert row["grid_w"] == pytest.approx(rec.readings.grid_w, nan_ok=True)
        assert row["ups-a.soc"] == pytest.approx(rec.readings.soc.get("ups-a"), nan_ok=True)
        if rec.result is not None:
            assert row["grid_target_w"] == rec.result.grid_target_w
            assert row["plan_w"] == rec.decision.plan_w
            assert row["bess-1.target_w"] == rec.result.asset_w["bess-1"]
    meta = read_meta(folder)
    assert meta["period_s"] == site.loop_period_s and set(meta["assets"]) == {
        "ups-a",
        "ups-b",
        "bess-1",
    }


def test_a_killed_controller_loses_at_most_the_last_second(tmp_path: Path):
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site_dict(tmp_path / "data")))
    site = load_site(site_file)
    folder = site.data_dir / RECORDER_DIR
    with gridpilot("demo", "--config", str(site_file)) as proc:
        wait_http(f"http://127.0.0.1:{site.api_port}/readyz", proc)
        time.sleep(2.5)
        seen = read_table(folder)  # another process reads while the controller writes
        time.sleep(1.0)
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert seen is not None and seen.num_rows >= 10
    assert any(p.open for p in partitions(folder))  # left as a stream: nobody compacted it
    table = read_table(folder)
    assert table is not None
    times = table.column("time_s").to_pylist()
    assert times[-1] > killed_at - site.recorder.batch_s - 3 * site.loop_period_s
    seqs = table.column("seq").to_pylist()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no tick missing before that
    assert max(b - a for a, b in pairwise(times)) < 3 * site.loop_period_s
    # the next start compacts what the kill left, every row kept
    PartitionWriter(folder, rows.schema(read_meta(folder)["assets"]), site.recorder.partition_s)
    assert all(p.path.suffix == CLOSED for p in partitions(folder))
    again = read_table(folder)
    assert again is not None and again.column_names == table.column_names
    for name in table.column_names:  # NaN where NaN was: equal arrays, not equal floats
        np.testing.assert_array_equal(again.column(name).to_numpy(), table.column(name).to_numpy())
