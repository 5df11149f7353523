"""Running `gridpilot` as a user does: a real process, stopped by a signal, checked for a
clean exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

GRIDPILOT = [sys.executable, "-m", "controller.cli"]


@contextmanager
def gridpilot(
    *args: str, env: dict[str, str] | None = None, umask: int = -1
) -> Iterator[subprocess.Popen]:
    """`gridpilot ARGS` in the background (with `umask`, if given); killed on the way out if
    still running."""
    proc = subprocess.Popen(
        [*GRIDPILOT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        umask=umask,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop_cleanly(proc: subprocess.Popen, last_words: str, sig: int = signal.SIGINT) -> str:
    """Send `sig`; assert exit 0, no traceback, and `last_words` logged. Returns stderr."""
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    assert last_words in stderr
    return stderr


def create_key(site_file: str, role: str, name: str = "test") -> str:
    """`gridpilot keys create` for the site; returns the key it printed."""
    out = subprocess.run(
        [*GRIDPILOT, "keys", "create", "--role", role, "--name", name, "--config", site_file],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("key "))


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 90.0) -> None:
    """Until `url` answers 200 (a probe); fails if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited early: {proc.stderr and proc.stderr.read()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered 200")
