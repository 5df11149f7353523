"""The SQLite file as a whole: checked at start, backed up online, restored.

At start a file that is corrupt is refused naming it and what to do, and so is a file that is
missing or empty where one existed before: a marker beside it (`gridpilot.sqlite.id`, outside
the file, so it survives the file's loss) says one was made here, and when. Starting anew on an
empty file would silently lose every key, setpoint, event and audit entry.

Everything written here is its owner's alone (it holds key hashes and the audit log): the data
folder is made 0700 and each file 0600 from the start, the SQLite file's -wal and -shm too.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from drivers.private import private_dir, touch_private, write_private

DB_FILE = "gridpilot.sqlite"  # in the site's data folder
TABLES = ("api_keys", "settings", "audit")  # what makes it a gridpilot file (a restore's check)


class StorageError(RuntimeError):
    """The file cannot be used as it is; the message names it and what to do."""


def marker_of(path: Path) -> Path:
    return path.with_name(path.name + ".id")


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def problems(path: Path, full: bool = False, ours: bool = False) -> list[str]:
    """What is wrong with the file (empty: nothing). `full`: SQLite's integrity_check, which
    reads every page; else quick_check (what a start can afford). `ours`: it must also hold
    gridpilot's tables (a backup about to be restored)."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
            rows = conn.execute(f"PRAGMA {'integrity_check' if full else 'quick_check'}")
            found = [r[0] for r in rows.fetchall() if r[0] != "ok"]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    missing = [t for t in TABLES if t not in tables] if ours else []
    return found + ([f"not a gridpilot database: no table {', '.join(missing)}"] if missing else [])


def check_at_start(path: Path) -> None:
    """Refuse a corrupt file, or a missing or empty one where one existed; mark a new one."""
    marker = marker_of(path)
    exists = path.exists() and path.stat().st_size > 0
    if not exists and marker.exists():
        try:
            made = _stamp(float(json.loads(marker.read_text())["created_at"]))
        except (ValueError, KeyError, TypeError):
            made = "a time its marker no longer says"
        state = "is empty" if path.exists() else "is missing"
        raise StorageError(
            f"database {path} {state}, but one was made here at {made} ({marker}): "
            f"restore a backup with `gridpilot db restore BACKUP_FILE`, or, to start anew and "
            f"lose its keys, setpoints, events and audit log, delete {marker}"
        )
    if exists:
        found = problems(path)
        if found:
            raise StorageError(
                f"database {path} is damaged ({'; '.join(found[:3])}): restore a backup with "
                f"`gridpilot db restore BACKUP_FILE`, or move the file away to start anew"
            )


def create(path: Path) -> None:
    """The file, made 0600 in a folder made 0700 if they are new, before SQLite opens it (its
    -wal and -shm then get the file's mode). Call after `check_at_start`."""
    private_dir(path.parent)
    touch_private(path)


def _write_marker(path: Path, **fields: object) -> None:
    text = json.dumps({"created_at": time.time(), **fields}) + "\n"
    write_private(marker_of(path), text.encode())


def mark(path: Path) -> None:
    """Say, beside the file, that one was made here (once its schema is in it)."""
    if not marker_of(path).exists():
        _write_marker(path)


def hold_run_lock(path: Path) -> TextIO:
    """The running controller's lock on its file (released when the process ends, however):
    a restore must not swap the file under it. StorageError if another holds it."""
    lock = touch_private(private_dir(path.parent) / (path.name + ".lock"))
    handle = open(lock, "a")  # noqa: SIM115 - held while running
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StorageError(
            f"a controller is running on {path} (it holds {handle.name}): stop it first"
        ) from None
    return handle


def backup(path: Path, out: Path) -> Path:
    """An online copy through SQLite's backup API: consistent while the controller runs."""
    if not path.exists():
        raise StorageError(f"no database at {path} to back up")
    private_dir(out.parent)
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)  # one a failed backup left
    touch_private(partial)  # a copy of the file is as private as the file
    with (
        closing(sqlite3.connect(path, timeout=10)) as source,
        closing(sqlite3.connect(partial)) as target,
    ):
        source.backup(target)
    os.replace(partial, out)
    return out


def restore(path: Path, source: Path) -> None:
    """Put a backup in place of the file (the controller must be stopped): checked whole
    first, then swapped in at once; the old file's write-ahead log is removed with it."""
    if not source.exists():
        raise StorageError(f"no backup at {source}")
    lock = hold_run_lock(path)  # refused while a controller runs on the file
    try:
        _restore(path, source)
    finally:
        lock.close()


def _restore(path: Path, source: Path) -> None:
    found = problems(source, full=True, ours=True)
    if found:
        raise StorageError(f"backup {source} is not usable: {'; '.join(found[:3])}")
    partial = path.with_name(path.name + ".restoring")
    backup(source, partial)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    os.replace(partial, path)
    _write_marker(path, restored=str(source))


def backup_due(folder: Path, site: str, every_s: float) -> bool:
    """Whether the site's newest backup in `folder` is older than `every_s` (or none is)."""
    times = [f.stat().st_mtime for f in folder.glob(f"gridpilot-{site}-*.sqlite")]
    return not times or time.time() - max(times) >= every_s


def periodic_backup(path: Path, folder: Path, site: str, keep: int) -> Path:
    """A timestamped backup of the site's file in `folder`, checked, then only the newest
    `keep` of this site's kept (a backup that does not check out replaces none)."""
    out = backup(path, folder / f"gridpilot-{site}-{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}.sqlite")
    found = problems(out, ours=True)
    if found:
        out.unlink()
        raise StorageError(f"backup of {path} does not check out: {'; '.join(found[:3])}")
    for old in sorted(folder.glob(f"gridpilot-{site}-*.sqlite"))[:-keep]:
        old.unlink()
    return out
