"""Files only their owner may read (private keys, the SQLite file, its backups): each is made
with its mode from the start (os.open with 0600, a folder mkdir'ed 0700), never chmod'ed after
a moment in which others could have opened it. A file or folder that already exists keeps its
mode: whoever made it chose it.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path) -> Path:
    """`path` as a folder, made 0700 if new (missing parents as the umask says)."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    return path


def touch_private(path: Path) -> Path:
    """`path`, made empty with 0600 if it does not exist. SQLite then opens it as it is and
    gives its -wal, -shm and journal files the database file's mode."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
    return path


def write_private(path: Path, data: bytes) -> Path:
    """`data` into `path`, a new file made 0600 (an existing one is overwritten in place)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    return path
