"""Structured logs: one logfmt line per record (`time= level= logger= msg= key=value ...`)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else came in through `extra=` and is a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}" if abs(value) < 1e4 else f"{value:.0f}"
    else:
        text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        parts = [
            f"time={ts}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_fmt(record.getMessage())}",
        ]
        parts += [
            f"{k}={_fmt(v)}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and v is not None
        ]
        if record.exc_info:
            parts.append(f"exc={_fmt(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries speak only when something is wrong, and not of link faults: the drivers report
    # those themselves, once per episode, naming the device (DEBUG shows the libraries' own).
    quiet = logging.DEBUG if level.upper() == "DEBUG" else logging.CRITICAL
    for library in ("pymodbus", "asyncua"):
        logging.getLogger(library).setLevel(quiet)
    for noisy in ("uvicorn.access", "numba", "httpx", "httpcore"):  # httpx: each token poll
        logging.getLogger(noisy).setLevel(logging.WARNING)
