"""A replay's run written as the recorder writes a live one, so `gridpilot report` judges a
replay with the same code as a site (and the two can be compared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from controller.dispatch import core
from controller.recorder import rows
from controller.recorder.files import PartitionWriter, partitions
from controller.recorder.reader import RECORDER_DIR, site_meta, write_meta
from controller.replay.run import ReplayRun, ReplaySettings

ASSET = "battery"  # a replay has one battery: the bank the core sees
PARTITION_S = 3600.0
BATCH_ROWS = 100_000


class RecordExistsError(FileExistsError):
    """The folder holds recorder data already: a replay never writes into a site's rows."""


def record_run(
    run: ReplayRun, dt_s: float, settings: ReplaySettings, data_dir: Path, start_s: float = 0.0
) -> Path:
    """Write the run under `data_dir/recorder` (rows from `start_s`, unix s); returns it."""
    folder = data_dir / RECORDER_DIR
    if partitions(folder):
        raise RecordExistsError(f"{folder} holds recorder data already; give an empty folder")
    n = len(run.load_w)
    d = settings.dispatch
    out = run.out
    columns = {
        "time_s": start_s + np.arange(n) * dt_s,
        "seq": np.arange(1, n + 1),
        "it_w": run.load_w,
        "site_load_w": run.load_w,
        "grid_w": out[:, core.O_GRID],
        "grid_target_w": out[:, core.O_TARGET],
        "plan_w": run.plan_w,
        "battery_w": out[:, core.O_BATTERY],
        "battery_target_w": out[:, core.O_BATTERY],
        "frequency_hz": np.full(n, float(d.nominal_frequency_hz)),
        "frequency_response_w": out[:, core.O_RESPONSE],
        "unserved_w": out[:, core.O_UNSERVED],
        "shed_w": out[:, core.O_SHED],
        "ramp_up_w_per_s": np.full(n, d.ramp_up_w_per_s),
        "ramp_down_w_per_s": np.full(n, d.ramp_down_w_per_s),
        "capacity_wh": np.full(n, settings.battery_wh),
        f"{ASSET}.power_w": out[:, core.O_BATTERY],
        f"{ASSET}.target_w": out[:, core.O_BATTERY],
        f"{ASSET}.soc": run.energy_j[1:] / run.capacity_j,
    }
    if d.import_cap_w is not None:
        columns["import_cap_w"] = np.full(n, d.import_cap_w)
    files = PartitionWriter(folder, rows.schema([ASSET]), PARTITION_S)
    for start in range(0, n, BATCH_ROWS):
        part = {k: v[start : start + BATCH_ROWS] for k, v in columns.items()}
        files.append(rows.columns_batch(part, len(part["time_s"]), [ASSET]))
    files.close()
    write_meta(folder, site_meta("replay", dt_s, d, [ASSET]))
    return folder
