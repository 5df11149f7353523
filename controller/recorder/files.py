"""The recorder's files: time partitions in one folder, written by one thread, read by anyone.

A partition is named by the UTC time of its first row (`20261130T045012.300Z`). While it is
written it is an Arrow IPC stream (`.arrows`): a batch appended and flushed about once a
second, so readers see it while it grows and a killed process loses at most the batch it was
writing. When the partition's time is up it is compacted to Parquet (`.parquet`, zstd), which
every data tool reads. A stream left behind by a crash is compacted at the next start.
"""

from __future__ import annotations

import calendar
import itertools
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from drivers.private import PRIVATE_FILE, private_dir

log = logging.getLogger("gridpilot.recorder")
OPEN, CLOSED = ".arrows", ".parquet"
NAME_FORMAT = "%Y%m%dT%H%M%S"


def partition_name(start_s: float) -> str:
    ms = math.floor(start_s * 1000)
    return f"{time.strftime(NAME_FORMAT, time.gmtime(ms // 1000))}.{ms % 1000:03d}Z"


def partition_start(path: Path) -> float | None:
    """The time in a partition's name (unix s), or None for a file that is not one."""
    stem = path.name.removesuffix(OPEN).removesuffix(CLOSED)
    try:
        whole, ms = stem.rstrip("Z").split(".")
        return calendar.timegm(time.strptime(whole, NAME_FORMAT)) + int(ms) / 1000
    except ValueError:
        return None


@dataclass(frozen=True)
class Partition:
    path: Path
    start_s: float

    @property
    def open(self) -> bool:
        return self.path.suffix == OPEN


def partitions(folder: Path) -> list[Partition]:
    """The folder's partitions in time order (a stream and its Parquet twin, both present for
    a moment while compacting: the Parquet one)."""
    found: dict[float, Partition] = {}
    for path in folder.glob("*Z.*") if folder.is_dir() else ():
        start = partition_start(path)
        if start is None or path.suffix not in (OPEN, CLOSED) or path.name.endswith(".tmp"):
            continue
        if start not in found or path.suffix == CLOSED:
            found[start] = Partition(path, start)
    return [found[k] for k in sorted(found)]


def read_stream(path: Path) -> pa.Table | None:
    """Every whole batch of a stream, even one still written or cut short by a kill; None if
    not even its schema is there yet."""
    batches = []
    try:
        with pa.OSFile(str(path), "rb") as source:
            reader = ipc.open_stream(source)
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
                except (pa.ArrowInvalid, OSError):  # a batch cut short: what came before holds
                    break
            return pa.Table.from_batches(batches, schema=reader.schema)
    except (pa.ArrowInvalid, OSError):
        return None


def read_partition(p: Partition, columns: Sequence[str] | None = None) -> pa.Table | None:
    """The partition's rows (only `columns` of a Parquet one, where it has them)."""
    if p.open:
        table = read_stream(p.path)
        if table is not None or p.path.exists():
            return table
        p = Partition(p.path.with_suffix(CLOSED), p.start_s)  # compacted since the listing
    try:
        if columns is not None:
            present = set(pq.read_schema(p.path).names)
            columns = [c for c in columns if c in present]
        return pq.read_table(p.path, columns=columns)
    except FileNotFoundError:  # removed (by retention) since the listing
        return None


def compact(path: Path) -> Path | None:
    """A stream as Parquet beside it (written whole, then renamed in), the stream removed."""
    table = read_stream(path)
    target = path.with_suffix(CLOSED)
    if table is not None and table.num_rows:
        tmp = target.with_name(target.name + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.chmod(PRIVATE_FILE)
        tmp.replace(target)
    path.unlink(missing_ok=True)
    return target if table is not None and table.num_rows else None


class PartitionWriter:
    """Appends batches to the open partition; owned by one thread (the recorder's writer).

    A failed write leaves the stream as far as it got (readers stop there) and the next
    append starts a new partition, so no batch is ever written after a broken one; the first
    append that works again compacts what the fault left."""

    def __init__(self, folder: Path, schema: pa.Schema, partition_s: float) -> None:
        self.folder = private_dir(folder)
        self.schema = schema
        self.partition_s = partition_s
        self._path: Path | None = None
        self._sink: pa.NativeFile | None = None
        self._writer: ipc.RecordBatchStreamWriter | None = None
        self._ends_at = 0.0
        self.last_seq = 0  # the last row written (seq counts from 1 in each process)
        self.rows_written = 0
        self._fault = False  # a write failed: streams it cut short wait for the disk to work
        for p in partitions(self.folder):  # left open by a crash: compacted now
            if p.open:
                compact(p.path)
        for tmp in self.folder.glob("*.tmp"):  # a compaction the crash interrupted
            tmp.unlink(missing_ok=True)

    def append(self, batch: pa.RecordBatch) -> None:
        """Write the batch (time-ordered rows), starting new partitions at their boundaries.
        Rows up to the last `seq` written are skipped: a batch tried again after a fault that
        came between two of its slices writes each row once."""
        seqs = batch.column("seq").to_numpy()
        batch = batch.slice(int(np.searchsorted(seqs, self.last_seq, side="right")))
        times = batch.column(0).to_numpy()
        start = 0
        try:
            while start < len(times):  # partition by partition
                if self._writer is None or times[start] >= self._ends_at:
                    self._rotate(float(times[start]))
                end = int((times[start:] < self._ends_at).sum()) + start
                part = batch.slice(start, end - start)
                self._write(part)
                self.last_seq = int(part.column("seq")[-1].as_py())
                self.rows_written += part.num_rows
                start = end
        except OSError:
            self._fault = True
            raise
        if self._fault:  # the disk works again: what the fault left behind, as Parquet
            self._fault = False
            for p in partitions(self.folder):
                if p.open and p.path != self._path:
                    compact(p.path)

    def _rotate(self, first_s: float) -> None:
        self.close()
        path = self.folder / (partition_name(first_s) + OPEN)
        while path.exists() or path.with_suffix(CLOSED).exists():  # a clock stepped back
            first_s += 0.001
            path = self.folder / (partition_name(first_s) + OPEN)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        os.close(fd)
        self._path = path
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = ipc.new_stream(self._sink, self.schema)
        self._ends_at = (first_s // self.partition_s + 1) * self.partition_s

    def _write(self, batch: pa.RecordBatch) -> None:
        assert self._writer is not None and self._sink is not None
        try:
            self._writer.write_batch(batch)
            self._sink.flush()
            os.fsync(self._sink.fileno())
        except OSError:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Stop writing the partition where it broke; it is compacted with what it holds once a
        write works again (or at the next start)."""
        path, self._path = self._path, None
        for closing in (self._writer, self._sink):
            try:
                if closing is not None:
                    closing.close()
            except OSError:
                pass
        self._writer = self._sink = None
        if path is not None:
            log.warning("recorder partition cut short", extra={"file": str(path)})

    def close(self) -> None:
        """Close the open partition and compact it to Parquet."""
        if self._writer is None:
            return
        path = self._path
        self._writer.close()
        assert self._sink is not None
        self._sink.close()
        self._writer = self._sink = self._path = None
        if path is not None:
            compact(path)


def remove_old(folder: Path, keep_after_s: float, max_bytes: int) -> list[Path]:
    """Delete closed partitions that ended before `keep_after_s`, then the oldest closed ones
    while the folder holds more than `max_bytes`; returns what was removed."""
    parts = partitions(folder)
    removed: list[Path] = []
    sizes = {p.path: _size(p.path) for p in parts}
    total = sum(sizes.values())
    for p, after in itertools.pairwise(parts):
        if p.open:
            continue
        if after.start_s < keep_after_s or total > max_bytes:
            p.path.unlink(missing_ok=True)
            total -= sizes[p.path]
            removed.append(p.path)
    return removed


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def folder_bytes(folder: Path) -> int:
    return sum(_size(p.path) for p in partitions(folder))


def iter_tables(
    folder: Path,
    from_s: float | None,
    to_s: float | None,
    columns: Sequence[str] | None = None,
) -> Iterator[pa.Table]:
    """Partitions that may hold rows in [from_s, to_s), read one at a time, in time order
    (with at least `columns`, where a partition has them)."""
    parts = partitions(folder)
    for i, p in enumerate(parts):
        next_start = parts[i + 1].start_s if i + 1 < len(parts) else float("inf")
        if to_s is not None and p.start_s >= to_s:
            break
        if from_s is not None and next_start <= from_s:
            continue
        table = read_partition(p, columns)
        if table is not None and table.num_rows:
            yield table
