"""The recorder's shell: each tick hands it a row (a tuple, made in microseconds); once a
`batch_s` the rows go to its writer thread as one batch, which appends them to the open
partition, rolls partitions over and removes old ones. The tick never waits on the disk; a
failing disk holds the batches (up to `MAX_HELD_S` of them, then new ones are shed and
counted) and they are written, in order, when it works again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from controller.config import RecorderConfig
from controller.record import TickRecord
from controller.recorder import rows
from controller.recorder.files import PartitionWriter, folder_bytes, remove_old
from controller.recorder.reader import write_meta
from controller.writer import Writer

log = logging.getLogger("gridpilot.recorder")
MAX_HELD_S = 600.0  # a failing disk: ten minutes of rows wait in memory (~5 MB at 10 Hz)
HOUSEKEEPING_S = 60.0  # old partitions removed, the folder's size measured


class Recorder:
    def __init__(self, folder: Path, cfg: RecorderConfig, meta: dict[str, Any]) -> None:
        self.folder, self.cfg, self.assets = folder, cfg, tuple(meta["assets"])
        self.files = PartitionWriter(folder, rows.schema(self.assets), cfg.partition_s)
        write_meta(folder, meta)
        self.writer = Writer("recorder", max_sheddable=max(1, int(MAX_HELD_S / cfg.batch_s)))
        self.bytes = folder_bytes(folder)  # the folder's size, measured once a minute
        self._rows: list[tuple] = []
        self._hand_at = 0.0
        self._housekeeping_at = 0.0

    @property
    def rows_total(self) -> int:
        """Rows written to disk since start."""
        return self.files.rows_written

    def record(self, rec: TickRecord) -> None:
        """In the tick: the row, and once a batch_s the batch handed over."""
        self._rows.append(rows.row(rec, self.assets))
        if rec.monotonic >= self._hand_at:
            self._hand_at = rec.monotonic + self.cfg.batch_s
            self.hand_over()

    def hand_over(self) -> None:
        if self._rows:
            taken, self._rows = self._rows, []
            self.writer.put(lambda: self._append(taken), "recorder rows", sheddable=True)

    def _append(self, taken: list[tuple]) -> None:
        self.files.append(rows.batch(taken, self.assets))
        now = time.monotonic()
        if now >= self._housekeeping_at:
            self._housekeeping_at = now + HOUSEKEEPING_S
            self._housekeeping()

    def _housekeeping(self) -> None:
        keep_after = time.time() - self.cfg.retention_h * 3600.0
        removed = remove_old(self.folder, keep_after, int(self.cfg.max_mb * 1e6))
        if removed:
            log.info("recorder files removed", extra={"count": len(removed)})
        self.bytes = folder_bytes(self.folder)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Every row recorded so far on disk (tests, tools, a capture about to read)."""
        self.hand_over()
        return self.writer.flush(timeout_s)

    def close(self) -> None:
        """The last rows written and the open partition compacted, then the thread stopped."""
        self.hand_over()
        self.writer.put(self.files.close, "recorder close")
        self.writer.close()
