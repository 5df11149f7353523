"""Attacks on a live controller's API, made as an outsider would make them, and what each one
costs the control loop (the security review, issue 17).

By default the bench starts its own site on free loopback ports, as separate processes so the
figures are the controller's alone: the simulated plant (`gridpilot sim --config SITE`) once for
the whole run, and the controller (`gridpilot run --config SITE`) afresh for each attack, on the
same SQLite file, its stderr captured to a file of its own. The file starts with 8,500 ended
demand-response events (a year of history, written straight into `dr_events` before the first
start), an operator key and an admin key (`gridpilot keys create`). The controller's soft
open-files limit is set to --server-nofile (1024 by default: what a systemd service or a Docker
container gets unless told otherwise; 0 keeps the bench's own). Everything the bench started is
stopped by the bench, whatever happens, and its work folder removed (--keep keeps it: site
file, logs). After each attack the bench says what the controller logged as it stopped
(errors: writes dropped or lost), and marks ended the events whose end the controller had not
recorded yet, so that the next attack's controller does not inherit that work.

With --url the attacks go to a controller already running (then --key, an operator key, and
--admin-key for /v1/keys; --db names its SQLite file where this machine can reach it, for the
locked-db attack and the events prefill). http or https (--insecure: no certificate check).
The bench reads nothing from responses beyond their status and content-type, except the
ramp-limit value in /v1/setpoints and the audit entries (found wherever they sit in the JSON:
a bare list or a page) in locked-db.

Each attack runs for --seconds (10) and is followed by --settle (5) seconds of calm; one that
is not over within --attack-timeout (300 s) is cancelled and reported as timed out.

  events        8,500 ended events in the table, then 300 posted (POST /v1/events, 8
                connections), all starting at one instant (far enough ahead for every POST to
                be in, by the median of 3 probe POSTs; or --event-lead) and ending together
                --seconds later; late ticks while posting, from 1 s before the start to 1 s
                before the end, and from then until the controller has recorded every end in
                its file (at most --record-wait, 60 s); and, from the file, how long after
                its edge the last start and end was stored
  locked-db     another process holds an exclusive lock on the SQLite file for 8 s while an
                operator PATCHes a ramp limit and GETs /v1/state; then is the value in force
                (GET /v1/setpoints) what was stored (the file) and audited (GET /v1/audit)?
  slowloris     1,000 connections each sending part of a request's headers, then a byte every
                3 s; how many does the server close, and when
  conn-flood    as many connections as the bench's own open-files limit allows (its soft limit
                raised to the hard one, capped at 5,000), held open, sending nothing
  big-header    an unauthenticated GET /healthz with a 64 MB header (X-Junk: aaa...), 3 times
  request-flood 32 keep-alive connections GETting /v1/events, /v1/keys (admin key),
                /v1/audit?limit=500, /v1/state and /metrics as fast as answers come

The table, one row per attack, over the span from just before the attack to the end of its
settle time, from the controller's own counters (scraped from /metrics before and after):
  ticks      control ticks run (gridpilot_loop_ticks_total) / ticks due in the span at the
             loop period (the site file's; 100 ms assumed with --url)
  late       ticks that started more than a tenth of a period late
             (gridpilot_loop_late_ticks_total)
  overruns   ticks skipped because the loop fell a whole period behind
             (gridpilot_loop_overruns_total)
  healthz    /healthz probes answered 200 within 2 s during the attack (one a second, each on
             a new connection, from a thread of its own) / probes made; then whether one
             answered after the settle time
  outcome    what the attack itself met: statuses, rates, connections held, and (local runs)
             how much the controller logged meanwhile ("log +N")

    python bench/bench_attacks.py [--attacks events,locked-db,...] [--seconds 10] [--settle 5]
    python bench/bench_attacks.py --url https://10.0.0.5:8080 --insecure --key gp_... \
        [--admin-key gp_...] [--db /var/lib/gridpilot/gridpilot.sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import signal
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from controller.edge import raise_open_files_limit
from tests.sites import site_dict

GRIDPILOT = [sys.executable, "-m", "controller.cli"]
TICKS, LATE, OVERRUNS = (
    "gridpilot_loop_ticks_total",
    "gridpilot_loop_late_ticks_total",
    "gridpilot_loop_overruns_total",
)
NET_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)
PREFILL_EVENTS = 8_500
LOCK_S = 8.0
SLOW_CONNS, DRIBBLE_S = 1_000, 3.0
FLOOD_CAP, FD_RESERVE = 5_000, 200  # the bench keeps some descriptors for its probes
BIG_HEADER_BYTES, BIG_HEADER_REPEATS = 64 << 20, 3
FLOOD_CONNS = 32
FLOOD_PATHS = (  # (path, needs the admin key)
    ("/v1/events", False),
    ("/v1/keys", True),
    ("/v1/audit?limit=500", False),
    ("/v1/state", False),
    ("/metrics", False),
)
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")  # what a backup or a stuck tool does to the file
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


# --- the target ---------------------------------------------------------------------------
@dataclass
class Target:
    """The controller attacked: its base URL, keys, and (when this bench started it) its
    process, log file and SQLite file."""

    url: str
    key: str  # operator (or admin)
    admin_key: str
    insecure: bool
    period_s: float = 0.1
    db: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def verify(self) -> bool:
        return not self.insecure

    def ssl_context(self) -> ssl.SSLContext | None:
        if urlsplit(self.url).scheme != "https":
            return None
        ctx = ssl.create_default_context()
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def auth(self, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key if admin else self.key}"}

    def client(self, connections: int = 4, timeout_s: float = 30.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            verify=self.verify,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=connections),
        )


# --- raw HTTP/1.1 over asyncio streams (the attacks' own client: cheap, and it sends what an
# attacker sends, not what a polite client would) ------------------------------------------
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(t: Target, timeout_s: float = 5.0) -> Stream:
    ctx = t.ssl_context()
    opening = asyncio.open_connection(
        t.host, t.port, ssl=ctx, server_hostname=t.host if ctx else None, limit=1 << 20
    )
    return await asyncio.wait_for(opening, timeout_s)


def close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, int, bool]:
    """One response: (status, body bytes, whether the connection stays open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    if b"content-length" in fields:
        size = int(fields[b"content-length"])
        await reader.readexactly(size)
    elif b"chunked" in fields.get(b"transfer-encoding", b""):
        size = await read_chunks(reader)
    else:
        return status, len(await reader.read()), False
    return status, size, fields.get(b"connection") != b"close"


async def read_chunks(reader: asyncio.StreamReader) -> int:
    size = 0
    while True:
        chunk = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(chunk + 2)
        size += chunk
        if chunk == 0:
            return size


# --- the controller's own counters ----------------------------------------------------------
Counters = dict[str, float]


def parse_counters(text: str) -> Counters:
    out = dict.fromkeys((TICKS, LATE, OVERRUNS), 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


async def scrape(t: Target, patience_s: float = 20.0) -> Counters | None:
    """The loop counters from /metrics, tried for `patience_s`; None if it never answered."""
    deadline = time.monotonic() + patience_s
    async with t.client(1, timeout_s=5.0) as api:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                r = await api.get("/metrics")
                if r.status_code == 200:
                    return parse_counters(r.text)
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.5)


@dataclass(frozen=True)
class Span:
    """The counters' change between two scrapes."""

    before: Counters | None
    after: Counters | None
    seconds: float

    def delta(self, name: str) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after[name] - self.before[name]

    def late(self) -> str:
        """'late L/T, overruns O': late ticks of those run, and ticks skipped."""
        late, ticks, skipped = self.delta(LATE), self.delta(TICKS), self.delta(OVERRUNS)
        if late is None or ticks is None or skipped is None:
            return "late ?"
        return f"late {late:.0f}/{ticks:.0f}" + (f", overruns {skipped:.0f}" if skipped else "")


class Meter:
    """Scrapes that mark a span's start and end."""

    def __init__(self, t: Target) -> None:
        self.t = t
        self.at: tuple[Counters | None, float] = (None, time.monotonic())

    async def mark(self) -> None:
        self.at = (await scrape(self.t), time.monotonic())

    async def span(self) -> Span:
        before, started = self.at
        await self.mark()
        return Span(before, self.at[0], self.at[1] - started)


# --- /healthz, probed from a thread of its own --------------------------------------------
def healthz(t: Target, timeout_s: float = 2.0) -> bool:
    try:
        return httpx.get(f"{t.url}/healthz", verify=t.verify, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


class HealthProbe:
    """Asks /healthz once a second on a new connection while the attack runs (a thread: a
    busy attack on the bench's event loop must not delay the probe)."""

    def __init__(self, t: Target, every_s: float = 1.0) -> None:
        self.t, self.every_s = t, every_s
        self.ok = self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.ok += healthz(self.t)
            self.total += 1
            self._stop.wait(max(0.0, self.every_s - (time.monotonic() - started)))

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5.0)


# --- what the attacks share ------------------------------------------------------------------
@dataclass
class Context:
    target: Target
    args: argparse.Namespace


def proc_status(pid: int, key: str) -> int | None:
    """A field of /proc/PID/status in kB (VmHWM, VmRSS), where the controller is ours."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def open_fds(t: Target) -> int | None:
    if t.process is None:
        return None
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{t.process.pid}/fd"))
    return None


async def sleep_until(wall_s: float) -> None:
    await asyncio.sleep(max(0.0, wall_s - time.time()))


def tally(counts: Counter[Any]) -> str:
    return ", ".join(f"{k}×{n}" for k, n in counts.most_common()) or "none"


# --- 1. events ---------------------------------------------------------------------------
def prefill_events(db: Path, n: int) -> int:
    """Up to `n` ended events in the table, written straight into it (a year of history, one
    an hour); returns the rows now there."""
    now = time.time()
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn, conn:
        have = conn.execute("SELECT count(*) FROM dr_events").fetchone()[0]
        rows = []
        for i in range(max(0, n - have)):
            start = now - (n - i + 1) * 3600.0
            kind = "shed" if i % 2 else "import_cap"
            rows.append(
                (kind, 2e7, start, start + 1800, "bench", start - 3600, start, start + 1800)
            )
        conn.executemany(
            "INSERT INTO dr_events (kind, value_w, start_s, end_s, created_by, created_at,"
            " started_at, ended_at) VALUES (?,?,?,?,?,?,?,?)",
            rows,
        )
        return have + len(rows)


async def post_events(t: Target, n: int, start_s: float, end_s: float) -> Counter[Any]:
    """`n` import caps (20 MW: above the site's draw, so they cost work, not control), all
    from `start_s` to `end_s`, from 8 connections."""
    body = {"kind": "import_cap", "value_w": 2e7, "start_s": start_s, "end_s": end_s}
    statuses: Counter[Any] = Counter()
    async with t.client(8) as api:
        gate = asyncio.Semaphore(8)

        async def post() -> None:
            async with gate:
                try:
                    r = await api.post("/v1/events", json=body, headers=t.auth())
                    statuses[r.status_code] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

        await asyncio.gather(*(post() for _ in range(n)))
    return statuses


async def time_one_post(t: Target, probes: int = 3) -> float:
    """Seconds one POST /v1/events takes now (the median of a few): probes two days ahead,
    each cancelled at once."""
    took = []
    async with t.client(1) as api:
        for _ in range(probes):
            body = {"kind": "import_cap", "value_w": 2e7, "start_s": time.time() + 172800.0}
            body["end_s"] = body["start_s"] + 60.0
            started = time.monotonic()
            r = await api.post("/v1/events", json=body, headers=t.auth())
            took.append(time.monotonic() - started)
            with contextlib.suppress(ValueError, StopIteration):
                event_id = next(d["id"] for d in dicts(r.json()) if "id" in d)
                await api.delete(f"/v1/events/{event_id}", headers=t.auth())
    return statistics.median(took)


def record_lags(db: Path, start_s: float) -> tuple[int, float | None, int, float | None]:
    """From the file: how many of the events starting at `start_s` have their start and end
    recorded, and the longest time from each edge to its row being written (the controller
    writes `started_at` and `ended_at` as it stores them)."""
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
        row = conn.execute(
            "SELECT count(started_at), max(started_at - start_s), count(ended_at),"
            " max(ended_at - end_s) FROM dr_events WHERE start_s = ? AND cancelled_at IS NULL",
            (start_s,),
        ).fetchone()
    return row[0], row[1], row[2], row[3]


def recorded(db: Path, start_s: float) -> tuple[int, int]:
    """How many of the events starting at `start_s` the controller has recorded as started,
    and as ended, in its file."""
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
        row = conn.execute(
            "SELECT count(started_at), count(ended_at) FROM dr_events WHERE start_s = ?",
            (start_s,),
        ).fetchone()
    return row[0], row[1]


@dataclass
class Recorded:
    """How far the controller got recording the events' starts and ends in its file."""

    n: int
    started: int = 0
    ended: int = 0
    all_started_s: float | None = None  # unix time the last start was in
    all_ended_s: float | None = None

    def update(self, started: int, ended: int) -> None:
        self.started, self.ended = started, ended
        if started >= self.n and self.all_started_s is None:
            self.all_started_s = time.time()
        if ended >= self.n and self.all_ended_s is None:
            self.all_ended_s = time.time()


async def watch_records(db: Path, start_s: float, rec: Recorded, give_up_s: float) -> None:
    """Follow the file until every end is recorded, or until `give_up_s` (unix time)."""
    while time.time() < give_up_s and rec.all_ended_s is None:
        with contextlib.suppress(sqlite3.Error):
            rec.update(*await asyncio.to_thread(recorded, db, start_s))
        await asyncio.sleep(0.25)


async def attack_events(ctx: Context) -> str:
    t, a = ctx.target, ctx.args
    in_table = prefill_events(t.db, PREFILL_EVENTS) if t.db else None
    per_post = await time_one_post(t)
    # Their start: once every POST is in, at the rate one took (they queue on one lock).
    lead = a.event_lead or 3.0 + 1.2 * a.events * per_post
    start_s = float(math.ceil(time.time() + lead))
    end_s = start_s + a.seconds
    meter = Meter(t)
    await meter.mark()
    posting = time.time()
    statuses = await post_events(t, a.events, start_s, end_s)
    posted = time.time()
    at_post = await meter.span()
    rec = Recorded(statuses.get(201, 0))
    watching = None
    if t.db is not None and rec.n:
        give_up = end_s + a.record_wait
        watching = asyncio.create_task(watch_records(t.db, start_s, rec, give_up))
    await sleep_until(start_s - 1.0)
    await meter.mark()
    await sleep_until(end_s - 1.0)
    at_start = await meter.span()
    if watching is not None:
        await watching
    await sleep_until(end_s + a.settle)  # and at least this long after the end
    at_end = await meter.span()
    margin = start_s - posted
    timing = f"{margin:.1f} s before their start" if margin >= 0 else f"{-margin:.1f} s LATE"
    table = f"{in_table:,} in the table" if in_table is not None else "table as found"
    starts = ends = ""
    if watching is not None and t.db is not None:
        started, start_lag, ended, end_lag = await asyncio.to_thread(record_lags, t.db, start_s)
        starts = f"; {started}/{rec.n} starts stored" + (
            f", the last {start_lag:.2f} s after the start" if start_lag is not None else ""
        )
        ends = f"; {ended}/{rec.n} ends stored" + (
            f", the last {end_lag:.2f} s after the end" if end_lag is not None else ""
        )
    return (
        f"{table}; a probe POST took {per_post * 1e3:.0f} ms; POST ×{a.events}: {tally(statuses)} "
        f"in {posted - posting:.1f} s ({at_post.late()}), done {timing}; "
        f"start to end-1 s: {at_start.late()}{starts}; "
        f"from end-1 s for {at_end.seconds:.0f} s: {at_end.late()}{ends}"
    )


# --- 2. locked-db --------------------------------------------------------------------------
def ramp_of(doc: Any) -> float | None:
    """The ramp limit in a setpoints document, wherever it sits."""
    return next((r["ramp_up_w_per_s"] for r in dicts(doc) if "ramp_up_w_per_s" in r), None)


def dicts(doc: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in a document, outermost first (a bare list or a page alike)."""
    if isinstance(doc, dict):
        yield doc
        for v in doc.values():
            yield from dicts(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from dicts(v)


def stored_ramp(db: Path | None) -> float | None:
    if db is None:
        return None
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        row = conn.execute("SELECT value FROM settings WHERE key = 'setpoints'").fetchone()
    return json.loads(row[0]).get("ramp_up_w_per_s") if row else None


async def audited(api: httpx.AsyncClient, t: Target, since_s: float, value: float) -> bool | None:
    r = await api.get("/v1/audit", params={"limit": 50}, headers=t.auth())
    if r.status_code != 200:
        return None
    return any(
        e.get("action") == "setpoints.change"
        and e.get("time_s", 0) >= since_s
        and ramp_of(e.get("new")) == value
        for e in dicts(r.json())
    )


async def hold_lock(db: Path) -> asyncio.subprocess.Process:
    locker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCKER, str(db), str(LOCK_S), stdout=asyncio.subprocess.PIPE
    )
    assert locker.stdout is not None
    line = await asyncio.wait_for(locker.stdout.readline(), 30.0)
    if line.strip() != b"locked":
        raise RuntimeError("the locker could not lock the file")
    return locker


async def poll_state(api: httpx.AsyncClient, t: Target, stop: asyncio.Event) -> str:
    """GET /v1/state every 0.25 s until `stop`: statuses and the slowest answer."""
    statuses: Counter[Any] = Counter()
    slowest = 0.0
    while not stop.is_set():
        started = time.monotonic()
        try:
            statuses[(await api.get("/v1/state", headers=t.auth())).status_code] += 1
        except httpx.HTTPError as exc:
            statuses[type(exc).__name__] += 1
        slowest = max(slowest, time.monotonic() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    return f"GET /v1/state {tally(statuses)} (slowest {slowest * 1e3:.0f} ms)"


async def attack_locked_db(ctx: Context) -> str:
    t = ctx.target
    if t.db is None:
        return "skipped: no SQLite file to lock (give --db with --url)"
    async with t.client(4) as api:
        before = ramp_of((await api.get("/v1/setpoints", headers=t.auth())).json())
        value = 400_000.0 if before != 400_000.0 else 450_000.0
        locker = await hold_lock(t.db)
        since = time.time()
        try:
            stop = asyncio.Event()
            state = asyncio.create_task(poll_state(api, t, stop))
            started = time.monotonic()
            r = await api.patch("/v1/setpoints", json={"ramp_up_w_per_s": value}, headers=t.auth())
            took = time.monotonic() - started
            await asyncio.wait_for(locker.wait(), LOCK_S + 30.0)
            stop.set()
            reads = await state
        finally:
            if locker.returncode is None:
                locker.kill()
                await locker.wait()
        await asyncio.sleep(1.0)  # the writers retry on their own time
        in_force = ramp_of((await api.get("/v1/setpoints", headers=t.auth())).json())
        was_audited = await audited(api, t, since, value)
    saved = stored_ramp(t.db)
    stored = before if saved is None else saved  # none saved yet: the site file's
    consistent = in_force == stored and was_audited == (in_force != before)
    kind = r.headers.get("content-type", "-").split(";")[0]
    return (
        f"PATCH {r.status_code} {kind} after {took:.1f} s; {reads}; ramp was {number(before)}, "
        f"sent {number(value)}: in force {number(in_force)}, stored {number(saved)}, audited "
        f"{yes_no(was_audited)} → {'consistent' if consistent else 'INCONSISTENT'}"
    )


def number(value: float | None) -> str:
    return "none" if value is None else f"{value:.0f}"


def yes_no(value: bool | None) -> str:
    return "?" if value is None else "yes" if value else "no"


# --- 3. slowloris and 4. conn-flood ----------------------------------------------------------
@dataclass
class Held:
    """A connection the attack holds; `ended` when the server closed it (or answered)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened: float
    ended: float | None = None
    watch: asyncio.Task[None] | None = None

    async def watch_server(self) -> None:
        with contextlib.suppress(*NET_ERRORS, ssl.SSLError):
            await self.reader.read(1)
        self.ended = time.monotonic()


async def open_many(
    t: Target, n: int, until: float, first_bytes: bytes, concurrency: int = 200
) -> tuple[list[Held], Counter[str]]:
    """Up to `n` connections opened before `until`, each sent `first_bytes`, each watched."""
    held: list[Held] = []
    failed: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            if time.monotonic() >= until:
                return
            try:
                reader, writer = await connect(t, timeout_s=3.0)
            except (*NET_ERRORS, ssl.SSLError) as exc:
                failed[type(exc).__name__] += 1
                return
            h = Held(reader, writer, time.monotonic())
            if first_bytes:
                writer.write(first_bytes)
            h.watch = asyncio.create_task(h.watch_server())
            held.append(h)

    await asyncio.gather(*(one() for _ in range(n)))
    return held, failed


def release(held: list[Held]) -> None:
    for h in held:
        if h.watch is not None:
            h.watch.cancel()
        close(h.writer)


def lifetimes(held: list[Held]) -> str:
    ended = [h.ended - h.opened for h in held if h.ended is not None]
    if not ended:
        return "the server closed none"
    return f"the server closed {len(ended)} (after {statistics.median(ended):.1f} s median)"


async def attack_slowloris(ctx: Context) -> str:
    t, a = ctx.target, ctx.args
    started = time.monotonic()
    until = started + a.seconds
    head = f"GET /healthz HTTP/1.1\r\nHost: {t.host}\r\nX-Slow: ".encode()
    held, failed = await open_many(t, SLOW_CONNS, until, head)
    opened_in = time.monotonic() - started
    try:
        while (now := time.monotonic()) < until:
            await asyncio.sleep(min(DRIBBLE_S, until - now))
            for h in held:
                if h.ended is None:
                    h.writer.write(b"a")
        fds = open_fds(t)
        still = sum(h.ended is None for h in held)
    finally:
        release(held)
    refused = f", {tally(failed)} refused" if failed else ""
    return (
        f"{len(held)}/{SLOW_CONNS} opened in {opened_in:.1f} s{refused}; after {a.seconds:.0f} s "
        f"{still} still open, {lifetimes(held)}" + (f"; controller fds {fds}" if fds else "")
    )


async def attack_conn_flood(ctx: Context) -> str:
    t, a = ctx.target, ctx.args
    limit = raise_open_files_limit()  # the bench's own, as the API process raises its
    n = min(FLOOD_CAP, limit - FD_RESERVE)
    started = time.monotonic()
    until = started + a.seconds
    held, failed = await open_many(t, n, until, b"")
    opened_in = time.monotonic() - started
    try:
        fds = open_fds(t)
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        still = sum(h.ended is None for h in held)
    finally:
        release(held)
    refused = f", failed {tally(failed)}" if failed else ""
    return (
        f"{len(held)}/{n} opened in {opened_in:.1f} s (bench limit {limit}){refused}; "
        f"{still} still open at {a.seconds:.0f} s, {lifetimes(held)}"
        + (f"; controller fds {fds}" if fds else "")
    )


# --- 5. big-header ------------------------------------------------------------------------
async def send_big_header(t: Target, size: int) -> str:
    """One GET /healthz, no key, with a `size`-byte header: the status, or how it failed."""
    started = time.monotonic()
    reader, writer = await connect(t)
    sent = 0
    chunk = b"a" * (1 << 20)
    try:
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {t.host}\r\nX-Junk: ".encode())
        while sent < size:
            writer.write(chunk[: size - sent])
            await asyncio.wait_for(writer.drain(), 30.0)
            sent += min(len(chunk), size - sent)
        writer.write(b"\r\n\r\n")
        await asyncio.wait_for(writer.drain(), 30.0)
        status = (await asyncio.wait_for(read_response(reader), 60.0))[0]
        return f"{status} in {time.monotonic() - started:.1f} s"
    except (*NET_ERRORS, ssl.SSLError) as exc:
        with contextlib.suppress(*NET_ERRORS, ssl.SSLError, ValueError, IndexError):
            status = (await asyncio.wait_for(read_response(reader), 2.0))[0]  # answered early?
            return f"{status} after {sent >> 20} MB"
        return f"{type(exc).__name__} after {sent >> 20} MB"
    finally:
        close(writer)


async def attack_big_header(ctx: Context) -> str:
    t = ctx.target
    rss_before = proc_status(t.process.pid, "VmRSS") if t.process else None
    answers = [await send_big_header(t, BIG_HEADER_BYTES) for _ in range(BIG_HEADER_REPEATS)]
    out = f"{BIG_HEADER_REPEATS}× {BIG_HEADER_BYTES >> 20} MB header: {'; '.join(answers)}"
    if t.process is not None:
        peak = proc_status(t.process.pid, "VmHWM")
        if rss_before is not None and peak is not None:
            out += f"; controller RSS {rss_before >> 10} MB before, peak {peak >> 10} MB"
    return out


# --- 6. request-flood ----------------------------------------------------------------------
async def flood_connection(
    t: Target, path: str, admin: bool, until: float, counts: Counter[tuple[str, Any]]
) -> None:
    """One keep-alive connection asking `path` again as soon as each answer is in."""
    key = t.admin_key if admin else t.key
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {t.host}\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()
    stream: Stream | None = None
    try:
        while time.monotonic() < until:
            try:
                if stream is None:
                    stream = await connect(t)
                stream[1].write(request)
                status, _, keep = await asyncio.wait_for(read_response(stream[0]), 30.0)
                counts[(path, status)] += 1
                if not keep:
                    close(stream[1])
                    stream = None
            except (*NET_ERRORS, ssl.SSLError) as exc:
                counts[(path, type(exc).__name__)] += 1
                if stream is not None:
                    close(stream[1])
                stream = None
                await asyncio.sleep(0.1)
    finally:
        if stream is not None:
            close(stream[1])


async def attack_request_flood(ctx: Context) -> str:
    t, a = ctx.target, ctx.args
    counts: Counter[tuple[str, Any]] = Counter()
    started = time.monotonic()
    until = started + a.seconds
    await asyncio.gather(
        *(
            flood_connection(t, *FLOOD_PATHS[i % len(FLOOD_PATHS)], until, counts)
            for i in range(FLOOD_CONNS)
        )
    )
    elapsed = time.monotonic() - started
    ok = sum(n for (_, status), n in counts.items() if status == 200)
    per_path = ", ".join(
        f"{path.split('?')[0].removeprefix('/v1')} {counts[(path, 200)] / elapsed:.0f}/s"
        for path, _ in FLOOD_PATHS
    )
    other = Counter({f"{p.split('?')[0]} {s}": n for (p, s), n in counts.items() if s != 200})
    return (
        f"{ok / elapsed:.0f} answers 200 a second from {FLOOD_CONNS} connections ({per_path})"
        + (f"; other: {tally(other)}" if other else "")
    )


ATTACKS: dict[str, Callable[[Context], Awaitable[str]]] = {
    "events": attack_events,
    "locked-db": attack_locked_db,
    "slowloris": attack_slowloris,
    "conn-flood": attack_conn_flood,
    "big-header": attack_big_header,
    "request-flood": attack_request_flood,
}


# --- the site this bench starts ------------------------------------------------------------
class LocalSite:
    """A site on free loopback ports in a work folder: the plant and, for each attack, a
    fresh controller process on the same SQLite file."""

    def __init__(self, work: Path, server_nofile: int) -> None:
        self.work = work
        self.server_nofile = server_nofile
        data = site_dict(work / "data")
        self.period_s = float(data.get("loop_period_s", 0.1))
        self.url = f"http://127.0.0.1:{data['api_port']}"
        self.site_file = work / "site.yaml"
        self.site_file.write_text(yaml.safe_dump(data))
        self.db = work / "data" / "gridpilot.sqlite"
        self.plant: subprocess.Popen[bytes] | None = None
        self.controller: subprocess.Popen[bytes] | None = None

    def create_key(self, role: str) -> str:
        made = subprocess.run(
            [*GRIDPILOT, "keys", "create", "--role", role, "--name", f"bench-{role}",
             "--config", str(self.site_file)],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return next(line.split()[1] for line in made.stdout.splitlines() if line.startswith("key"))

    def start_plant(self) -> None:
        log = (self.work / "plant.log").open("wb")
        self.plant = subprocess.Popen(
            [*GRIDPILOT, "sim", "--config", str(self.site_file), "--log-level", "WARNING"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def _limit_nofile(self) -> None:  # in the controller's process, before it runs
        if self.server_nofile:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.server_nofile, hard))

    def start_controller(self, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.work / f"controller-{name}.log"
        self.controller = subprocess.Popen(
            [*GRIDPILOT, "run", "--config", str(self.site_file)],
            stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True,
            preexec_fn=self._limit_nofile, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        return self.controller, log

    def stop_controller(self) -> str | None:
        """SIGTERM, then SIGKILL after 30 s; says what went wrong, if anything."""
        proc, self.controller = self.controller, None
        return stop(proc, "controller") if proc is not None else None

    def close(self) -> None:
        self.stop_controller()
        if self.plant is not None:
            stop(self.plant, "plant")
            self.plant = None


def stop(proc: subprocess.Popen[bytes], what: str) -> str | None:
    if proc.poll() is not None:
        return f"{what} had exited ({proc.returncode})"
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"{what} did not stop within 30 s of SIGTERM: killed"
    return None if code == 0 else f"{what} exited {code} on SIGTERM"


def wait_ready(t: Target, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if t.process is not None and t.process.poll() is not None:
            raise RuntimeError(f"the controller exited ({t.process.returncode}); see {t.log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{t.url}/readyz", verify=t.verify, timeout=2.0).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{t.url}/readyz never answered 200")


# --- running an attack -------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    attack: str
    ticks: str
    late: str
    overruns: str
    healthz: str
    outcome: str


def log_growth(log: Path | None, from_bytes: int) -> str:
    """What the controller logged since `from_bytes`: size, lines, warnings and errors, and
    the lines that matter here (control degraded; accept() out of resources)."""
    if log is None or not log.exists():
        return ""
    text = log.read_bytes()[from_bytes:]
    size = f"{len(text) / 1e6:.1f} MB" if len(text) >= 1e6 else f"{len(text) / 1e3:.0f} kB"
    counts = {
        "warning": text.count(b"level=warning"),
        "error": text.count(b"level=error"),
        "control degraded": text.count(b'msg="control degraded"'),
        "accept() out of resources": text.count(b"out of system resource"),
    }
    found = "".join(f", {what} ×{n}" for what, n in counts.items() if n)
    lines = text.count(b"\n")
    return f"; log +{size} ({lines} lines{found})"


def size_of(log: Path | None) -> int:
    return log.stat().st_size if log is not None and log.exists() else 0


async def run_attack(name: str, ctx: Context) -> Row:
    t, a = ctx.target, ctx.args
    before, started = await scrape(t), time.monotonic()
    log_from = size_of(t.log)
    with HealthProbe(t) as probe:
        try:
            outcome = await asyncio.wait_for(ATTACKS[name](ctx), a.attack_timeout)
        except TimeoutError:
            outcome = f"TIMED OUT: not over after {a.attack_timeout:.0f} s, cancelled"
        except Exception as exc:
            outcome = f"bench error: {type(exc).__name__}: {exc}"
    await asyncio.sleep(a.settle)
    after = await scrape(t)
    span = Span(before, after, time.monotonic() - started)
    healthy = await asyncio.to_thread(healthz, t, 5.0)
    if t.process is not None and t.process.poll() is not None:
        outcome += f"; CONTROLLER EXITED ({t.process.returncode})"
    return Row(
        attack=name,
        ticks=figure(span.delta(TICKS), f"/{span.seconds / t.period_s:.0f}"),
        late=figure(span.delta(LATE)),
        overruns=figure(span.delta(OVERRUNS)),
        healthz=f"{probe.ok}/{probe.total}, after {'ok' if healthy else 'FAIL'}",
        outcome=outcome + log_growth(t.log, log_from),
    )


def figure(value: float | None, suffix: str = "") -> str:
    return "?" if value is None else f"{value:.0f}{suffix}"


async def attack_local(name: str, site: LocalSite, t: Target, args: argparse.Namespace) -> Row:
    """One attack on a fresh controller: start it, let it settle, attack, stop it; then what
    its stop logged, and the events it left unrecorded tidied away."""
    t.process, t.log = site.start_controller(name)
    try:
        await asyncio.to_thread(wait_ready, t)
        await asyncio.sleep(args.warmup)
        row = await run_attack(name, Context(t, args))
    except RuntimeError as exc:
        row = Row(name, "?", "?", "?", "-", f"not run: {exc}")
    finally:
        trouble = await asyncio.to_thread(site.stop_controller)
    notes = [trouble.upper() if trouble else "", at_stop(t.log), tidy_events(site.db)]
    outcome = "; ".join([row.outcome, *(n for n in notes if n)])
    return dataclasses.replace(row, outcome=outcome)


def at_stop(log: Path | None) -> str:
    """The errors the controller logged from 'Shutting down' on (writes dropped, lost)."""
    if log is None or not log.exists():
        return ""
    text = log.read_bytes()
    tail = text[text.rfind(b'msg="Shutting down"') :]
    errors = [line for line in tail.splitlines() if b"level=error" in line]
    if not errors:
        return ""
    first = errors[0].split(b"msg=", 1)[-1][:80].decode(errors="replace")
    return f"at stop: {len(errors)} errors logged (first: {first})"


def tidy_events(db: Path) -> str:
    """Starts and ends of events now over that the controller had not recorded yet, written
    into the file by the bench, so the next attack's controller does not inherit that work."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn, conn:
        cur = conn.execute(
            "UPDATE dr_events SET started_at = coalesce(started_at, start_s),"
            " ended_at = coalesce(ended_at, end_s)"
            " WHERE cancelled_at IS NULL AND end_s < ? AND ended_at IS NULL",
            (time.time(),),
        )
        tidied = cur.rowcount
    return f"bench tidied {tidied} unrecorded event ends" if tidied else ""


# --- output --------------------------------------------------------------------------------
HEADER = ("attack", "ticks", "late", "overruns", "healthz ok", "outcome")


def print_table(rows: list[Row]) -> None:
    cells = [HEADER, *((r.attack, r.ticks, r.late, r.overruns, r.healthz, r.outcome) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER) - 1)]
    for i, c in enumerate(cells):
        print(" | ".join(v.ljust(w) for v, w in zip(c[:-1], widths, strict=True)) + " | " + c[-1])
        if i == 0:
            print("-+-".join("-" * w for w in widths) + "-+-" + "-" * len(HEADER[-1]))


def describe(args: argparse.Namespace, target: Target) -> None:
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        f"; load average {load_average()} (others' work shares these CPUs)"
    )
    if args.url:
        print(f"target: {args.url} (already running)")
    else:
        limit = args.server_nofile or "inherited"
        print(
            "target: `gridpilot run` (a fresh process per attack, beside `gridpilot sim`) on "
            f"{target.url}; its open-files limit {limit}; {PREFILL_EVENTS:,} events in the table"
        )
    print(f"each attack: {args.seconds:.0f} s, then {args.settle:.0f} s to settle", flush=True)


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def attack_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown attack(s) {unknown}; known: {list(ATTACKS)}")
    return names


def parse_args() -> argparse.Namespace:
    intro = " ".join((__doc__ or "").split("\n\n")[0].split())
    ap = argparse.ArgumentParser(description=intro)
    ap.add_argument(
        "--attacks",
        type=attack_names,
        default=list(ATTACKS),
        help=f"comma-separated, of {','.join(ATTACKS)} (default: all)",
    )
    ap.add_argument("--seconds", type=float, default=10.0, help="each attack's length")
    ap.add_argument("--settle", type=float, default=5.0, help="calm after each attack, s")
    ap.add_argument("--warmup", type=float, default=3.0, help="after the controller is ready, s")
    ap.add_argument(
        "--attack-timeout",
        type=float,
        default=300.0,
        help="cancel an attack not over after this long, s",
    )
    ap.add_argument("--events", type=int, default=300, help="events posted to start together")
    ap.add_argument(
        "--event-lead",
        type=float,
        default=0.0,
        help="their start, this long after the first is posted, s (0: from one POST's time)",
    )
    ap.add_argument(
        "--record-wait",
        type=float,
        default=60.0,
        help="events: wait this long after their end for the controller to record them, s",
    )
    ap.add_argument(
        "--server-nofile",
        type=int,
        default=1024,
        help="the controller's soft open-files limit (0: the bench's own)",
    )
    ap.add_argument("--url", help="attack this running controller instead of starting one")
    ap.add_argument("--key", help="with --url: an operator (or admin) key")
    ap.add_argument("--admin-key", help="with --url: an admin key, for /v1/keys")
    ap.add_argument("--db", type=Path, help="with --url: its SQLite file, if reachable")
    ap.add_argument("--insecure", action="store_true", help="https without certificate checks")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = ap.parse_args()
    if args.url and not args.key:
        ap.error("--url needs --key")
    return args


async def run_remote(args: argparse.Namespace) -> list[Row]:
    t = Target(args.url.rstrip("/"), args.key, args.admin_key or args.key, args.insecure,
               db=args.db)  # fmt: skip
    describe(args, t)
    rows = []
    for name in args.attacks:
        rows.append(await run_attack(name, Context(t, args)))
        print(f"  {name}: done", file=sys.stderr, flush=True)
    return rows


async def run_local(args: argparse.Namespace, site: LocalSite) -> list[Row]:
    operator, admin = site.create_key("operator"), site.create_key("admin")
    prefill_events(site.db, PREFILL_EVENTS)
    t = Target(site.url, operator, admin, args.insecure, site.period_s, db=site.db)
    describe(args, t)
    site.start_plant()
    rows = []
    for name in args.attacks:
        rows.append(await attack_local(name, site, t, args))
        print(f"  {name}: done", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    args = parse_args()
    raise_open_files_limit()
    # SIGTERM ends the bench as Ctrl-C does: through the `finally` that stops its processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.url:
        rows = asyncio.run(run_remote(args))
    else:
        work = Path(tempfile.mkdtemp(prefix="gridpilot-bench-attacks-"))
        site = LocalSite(work, args.server_nofile)
        try:
            rows = asyncio.run(run_local(args, site))
        finally:
            site.close()
            if args.keep:
                print(f"work folder kept: {work}", file=sys.stderr)
            else:
                subprocess.run(["rm", "-rf", str(work)], check=False)
    print_table(rows)
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
