"""The operators' side of the SQLite file: API keys, setpoints and mode, demand-response
events, workload notices, alarms and the audit log. Everything here survives a restart.

Its own connection (WAL lets it share the file with the sample writer); calls are short and
rare, and the API runs them in a worker thread so the control loop never waits on them. A
change and its audit entry are one transaction: both stored, or (the file locked past the busy
timeout, the disk full) neither, and then the caller changes nothing in memory either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from controller.config import LimitsConfig
from controller.dbfile import check_at_start, create, mark

Rung = Literal["viewer", "operator", "admin"]
Role = Literal[Rung, "workload"]
MIN_KEY_CHARS = 16
LADDER: tuple[Rung, ...] = ("viewer", "operator", "admin")  # each may do what those before may
# Every role a key may have. `workload` (a job scheduler, a training script) is off the
# ladder: it may do only what an endpoint names it for (post and cancel notices), nothing else.
ROLES: tuple[Role, ...] = (*LADDER, "workload")
BUSY_TIMEOUT_S = 5.0  # a write waits this long for another's lock on the file, then fails
NO_CURSOR = 2**62  # above every id: a page without `before_id` starts at the newest

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL,
    salt BLOB NOT NULL, hash BLOB NOT NULL,      -- sha256(salt + secret): never the key
    created_at REAL NOT NULL, revoked_at REAL
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dr_events (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, value_w REAL NOT NULL,
    start_s REAL NOT NULL, end_s REAL NOT NULL,  -- unix time
    created_by TEXT NOT NULL, created_at REAL NOT NULL, cancelled_at REAL,
    started_at REAL, ended_at REAL,              -- when the controller saw it start and end
    source TEXT NOT NULL DEFAULT 'operator',     -- operator, or openadr (a utility's VTN)
    ref TEXT, revision TEXT                      -- openadr: VTN event id/interval id, its version
);
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, at_s REAL NOT NULL,  -- unix time
    duration_s REAL, power_w REAL, gpus INTEGER, job_id TEXT,       -- as given
    ends_s REAL NOT NULL,                        -- pending until then (its time, duration, grace)
    created_by TEXT NOT NULL, created_at REAL NOT NULL, cancelled_at REAL
);
CREATE INDEX IF NOT EXISTS notices_by_end ON notices (ends_s);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL, severity TEXT NOT NULL, message TEXT NOT NULL,
    raised_at REAL NOT NULL, cleared_at REAL, acked_at REAL, acked_by TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, time_s REAL NOT NULL,
    key_id TEXT, key_name TEXT NOT NULL,         -- who: a key, or "system" for TTL and events
    action TEXT NOT NULL, old TEXT, new TEXT     -- JSON
);
"""

# High availability: the tables a standby takes from the leader (through etcd), each by its key
# column. Not alarms: each controller raises its own from what it sees.
REPLICATED: dict[str, str] = {
    "api_keys": "id",
    "settings": "key",
    "dr_events": "id",
    "notices": "id",
    "audit": "id",
}
_TEXT_KEYS = ("api_keys", "settings")  # the others are keyed by an INTEGER id


def _journal_schema() -> str:
    """The change journal: which replicated row changed, in order, for the replica to publish.
    Triggers write it only while `ha_config.enabled` (HA on): a single node pays one lookup of
    a one-row table per write and its journal stays empty. AUTOINCREMENT: a seq is never
    reused, so forgetting entries up to one published can never take a newer one."""
    ddl = [
        "CREATE TABLE IF NOT EXISTS ha_config ("
        " one INTEGER PRIMARY KEY CHECK (one = 1), enabled INTEGER NOT NULL);",
        "INSERT OR IGNORE INTO ha_config (one, enabled) VALUES (1, 0);",
        "CREATE TABLE IF NOT EXISTS ha_journal ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, pk TEXT NOT NULL);",
    ]
    on = "WHEN (SELECT enabled FROM ha_config WHERE one = 1)"
    for table, pk in REPLICATED.items():
        note = f"INSERT INTO ha_journal (tbl, pk) VALUES ('{table}', {{}});"
        ddl += [
            f"CREATE TRIGGER IF NOT EXISTS ha_{table}_insert AFTER INSERT ON {table} {on}"
            f" BEGIN {note.format(f'NEW.{pk}')} END;",
            # A changed key (never made by this module, but possible) is the old row gone too.
            f"CREATE TRIGGER IF NOT EXISTS ha_{table}_update AFTER UPDATE ON {table} {on} BEGIN"
            f" INSERT INTO ha_journal (tbl, pk) SELECT '{table}', OLD.{pk}"
            f" WHERE OLD.{pk} IS NOT NEW.{pk}; {note.format(f'NEW.{pk}')} END;",
            f"CREATE TRIGGER IF NOT EXISTS ha_{table}_delete AFTER DELETE ON {table} {on}"
            f" BEGIN {note.format(f'OLD.{pk}')} END;",
        ]
    return "\n".join(ddl)


# Columns added since a table was first made: a file from an older version gets them (SQLite's
# ADD COLUMN keeps every row, with the default).
ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "dr_events": (
        ("source", "TEXT NOT NULL DEFAULT 'operator'"),
        ("ref", "TEXT"),
        ("revision", "TEXT"),
    ),
}


def _add_columns(conn: sqlite3.Connection) -> None:
    for table, columns in ADDED_COLUMNS.items():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        for name, ddl in columns:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")


@dataclass(frozen=True)
class Origin:
    """Where an event came from when not from an operator: its source and, there, its key and
    version (OpenADR: the VTN's event id with the interval's, and its modification time)."""

    source: str
    ref: str
    revision: str


JournalEntry = tuple[int, str, str, dict[str, Any] | None]  # seq, table, key, row (None: gone)
Change = tuple[str, str, dict[str, Any] | None]  # table, key, row to store (None: delete it)


@dataclass(frozen=True)
class Actor:
    key_id: str | None
    name: str
    role: Role

    @property
    def label(self) -> str:
        return self.name if self.key_id is None else f"{self.name} ({self.key_id})"


SYSTEM = Actor(None, "system", "admin")


def _connect(path: Path, read_only: bool) -> sqlite3.Connection:
    target, uri = (f"{path.resolve().as_uri()}?mode=ro", True) if read_only else (str(path), False)
    conn = sqlite3.connect(target, uri=uri, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


class Conflict(Exception):
    """A change refused for what is stored now (a bound reached, the last admin key); nothing
    was changed. The API answers 409 with this message, the CLI exits 2 with it."""


def check_bound(count: int, limit: int, what: str, setting: str, remedy: str) -> None:
    """Conflict when `count` of `what` already reach `limit` (the site's `setting`)."""
    if count >= limit:
        raise Conflict(f"{count} {what}, as many as {setting} allows: {remedy}")


Table = Literal["dr_events", "notices"]  # tables of rows an operator makes, by id


def _below(before_id: int | None) -> int:
    return NO_CURSOR if before_id is None else before_id


def _digest(salt: bytes, secret: str) -> bytes:
    # Keys are 192 random bits, not passwords: a salted SHA-256 cannot be brute-forced, and it
    # keeps every request's check in microseconds (a slow KDF would cap the API's throughput).
    return hashlib.sha256(salt + secret.encode()).digest()


class OpsDB:
    def __init__(
        self, path: Path, limits: LimitsConfig | None = None, read_only: bool = False
    ) -> None:
        """The file, its schema made if new. `read_only`: the API process's view of a file the
        controller has opened (and checked) already; any write raises sqlite3.Error."""
        self.limits = limits or LimitsConfig()
        self._lock = threading.RLock()  # a transaction holds it across its statements
        if read_only:
            self._conn = _connect(path, read_only=True)
        else:
            check_at_start(path)  # a damaged or vanished file is refused, never silently remade
            create(path)  # 0600 in a 0700 folder from the start: it holds the keys' hashes
            self._conn = _connect(path, read_only=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, fast
            self._conn.executescript(SCHEMA)
            _add_columns(self._conn)
            self._conn.executescript(_journal_schema())
            mark(path)
        # Reads on a connection of their own: under WAL they never wait for a write (one held
        # by a locked or slow disk), so keys are still checked and state still served.
        self._read_lock = threading.Lock()
        self._reader = _connect(path, read_only=read_only)
        self._reader.execute("PRAGMA busy_timeout=1000")
        self._columns: dict[str, frozenset[str]] = {}  # of the replicated tables, when needed

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._conn.close()
            self._reader.close()

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows as tuples, on the reading connection (M&V reads the samples with it)."""
        with self._read_lock:
            return [tuple(r) for r in self._reader.execute(sql, args).fetchall()]

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._read_lock:
            return [dict(r) for r in self._reader.execute(sql, args).fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The writes inside, all stored or none (on this connection, from this thread): a
        failed COMMIT rolls back too, so no half-open transaction is left for the next."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock:
            return self._conn.execute(sql, args).lastrowid or 0

    def _written(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        """One row as the writing connection sees it: in a transaction, with its own writes
        (the reader sees only what is committed)."""
        with self._lock:
            row = self._conn.execute(sql, args).fetchone()
        return dict(row) if row is not None else None

    # --- keys -------------------------------------------------------------------------
    def create_key(self, name: str, role: Role, by: Actor) -> tuple[str, str]:
        """A new key and its audit entry: (id, the key itself). The key is shown once and
        never stored. Conflict once `limits.max_active_keys` are active."""
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        with self.transaction():
            self._insert_key(key_id, secret, name, role, by)
        return key_id, f"gp_{key_id}_{secret}"

    def _insert_key(self, key_id: str, secret: str, name: str, role: Role, by: Actor) -> None:
        """In a transaction: a new key (never one in place of another) and its audit entry."""
        active = self._written("SELECT count(*) AS n FROM api_keys WHERE revoked_at IS NULL")
        count = active["n"] if active is not None else 0
        limit = self.limits.max_active_keys
        check_bound(
            count, limit, "API keys are active", "limits.max_active_keys", "revoke one first"
        )
        salt = secrets.token_bytes(16)
        self._write(
            "INSERT INTO api_keys (id, name, role, salt, hash, created_at) VALUES (?,?,?,?,?,?)",
            (key_id, name, role, salt, _digest(salt, secret), time.time()),
        )
        self.audit(by, "key.create", None, {"id": key_id, "name": name, "role": role})

    def add_key(self, token: str, name: str, role: Role, by: Actor) -> str:
        """Store a key given from outside (the demo's GRIDPILOT_API_KEY), audited; returns its
        id. One stored before stays as it is: a revoked one is never made active again
        (Conflict says so), nor is another secret put under its id."""
        if len(token) < MIN_KEY_CHARS:
            raise ValueError(f"an API key has at least {MIN_KEY_CHARS} characters")
        key_id, secret = parse_token(token)
        with self.transaction():
            row = self._written("SELECT * FROM api_keys WHERE id = ?", (key_id,))
            if row is None:
                self._insert_key(key_id, secret, name, role, by)
                return key_id
        if row["revoked_at"] is not None:
            raise Conflict(f"key {key_id} was revoked; it stays revoked: give another key")
        if not hmac.compare_digest(row["hash"], _digest(row["salt"], secret)):
            raise Conflict(f"key id {key_id} is taken by another key: give another key")
        return key_id

    def verify(self, token: str) -> Actor | None:
        if len(token) < MIN_KEY_CHARS or len(token) > 512:
            return None
        key_id, secret = parse_token(token)
        rows = self._rows("SELECT * FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,))
        if not rows or not hmac.compare_digest(rows[0]["hash"], _digest(rows[0]["salt"], secret)):
            return None
        return Actor(key_id, rows[0]["name"], rows[0]["role"])

    def api_keys(self) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT id, name, role, created_at, revoked_at FROM api_keys ORDER BY created_at"
        )

    def keys_page(self, limit: int, before_id: str | None) -> list[dict[str, Any]]:
        """Keys, newest first, those made before key `before_id` (an unknown one: none)."""
        start = "(SELECT created_at, id FROM api_keys WHERE id = ?)"
        return self._rows(
            "SELECT id, name, role, created_at, revoked_at FROM api_keys"
            f" WHERE ? IS NULL OR (created_at, id) < {start}"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            (before_id, before_id, limit),
        )

    def revoke_key(self, key_id: str, by: Actor) -> bool:
        """Revoke an active key, with its audit entry; False if no active key has this id.
        The last active admin key stays (Conflict): without one, no key could be made or
        revoked through the API any more."""
        with self.transaction():
            row = self._written(
                "SELECT role FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,)
            )
            if row is None:
                return False
            admins = self._written(
                "SELECT count(*) AS n FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL"
            )
            if row["role"] == "admin" and admins is not None and admins["n"] <= 1:
                raise Conflict(
                    f"key {key_id} is the last active admin key: make another admin key "
                    f"before revoking it"
                )
            self._write("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (time.time(), key_id))
            self.audit(by, "key.revoke", {"id": key_id}, None)
        return True

    def ensure_demo_key(self, env_key: str | None, by: Actor) -> str | None:
        """The demo's admin key: GRIDPILOT_API_KEY when given, else one made (audited) when no
        key is active. Returns a key to show (only a new one). Conflict when the given key
        was revoked: a revoked key stays revoked, however often the demo starts."""
        if env_key:
            self.add_key(env_key, "demo-admin", "admin", by)
            return None
        if self.has_keys():
            return None
        return self.create_key("demo-admin", "admin", by)[1]

    def has_keys(self) -> bool:
        return bool(self._rows("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1"))

    # --- settings (setpoints, mode) ---------------------------------------------------
    def get_setting(self, key: str) -> Any:
        rows = self._rows("SELECT value FROM settings WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else None

    def put_setting(self, key: str, value: Any) -> None:
        self._write(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, json.dumps(value))
        )

    # --- demand-response events -------------------------------------------------------
    def add_event(
        self,
        kind: str,
        value_w: float,
        start_s: float,
        end_s: float,
        by: Actor,
        origin: Origin | None = None,
    ) -> dict[str, Any]:
        """Store an event; its row as stored (in a transaction: before the commit)."""
        fields: dict[str, Any] = {
            "kind": kind,
            "value_w": value_w,
            "start_s": start_s,
            "end_s": end_s,
        }
        if origin is not None:
            fields |= {"source": origin.source, "ref": origin.ref, "revision": origin.revision}
        return self._insert("dr_events", fields, by)

    def events_from(self, source: str, since_s: float) -> list[dict[str, Any]]:
        """The events of one source that end after `since_s` (cancelled ones too: a VTN's
        event an operator cancelled stays cancelled until the VTN changes it)."""
        return self._rows(
            "SELECT * FROM dr_events WHERE source = ? AND end_s > ? ORDER BY id", (source, since_s)
        )

    def pending_events(self, now_s: float) -> list[dict[str, Any]]:
        """The events a tick must still look at: not yet ended, and not cancelled or over
        before they ever started."""
        return self._rows(
            "SELECT * FROM dr_events WHERE ended_at IS NULL AND (started_at IS NOT NULL"
            " OR (cancelled_at IS NULL AND end_s > ?)) ORDER BY start_s, id",
            (now_s,),
        )

    def events_page(self, limit: int, before_id: int | None) -> list[dict[str, Any]]:
        return self.page("dr_events", limit, before_id)

    def event(self, event_id: int) -> dict[str, Any] | None:
        return self.row("dr_events", event_id)

    def mark_event(
        self, event_id: int, column: Literal["started_at", "ended_at", "cancelled_at"]
    ) -> dict[str, Any] | None:
        """Note when an event started, ended or was cancelled; its row as it then stands."""
        return self._stamp("dr_events", event_id, column)

    # --- workload notices -------------------------------------------------------------
    def add_notice(self, notice: dict[str, Any], ends_s: float, by: Actor) -> dict[str, Any]:
        """Store a notice (its fields as given, none absent); its row as stored."""
        return self._insert("notices", {**notice, "ends_s": ends_s}, by)

    def pending_notices(self, now_s: float) -> list[dict[str, Any]]:
        """The notices not yet over nor cancelled, in order of their time."""
        return self._rows(
            "SELECT * FROM notices WHERE ends_s > ? AND cancelled_at IS NULL ORDER BY at_s, id",
            (now_s,),
        )

    def cancel_notice(self, notice_id: int) -> dict[str, Any] | None:
        return self._stamp("notices", notice_id, "cancelled_at")

    # --- rows an operator makes, by id (events, notices) ------------------------------
    def _insert(self, table: Table, fields: dict[str, Any], by: Actor) -> dict[str, Any]:
        """In a transaction: a new row, made by `by` now; the row as stored (before the
        commit). Columns are this module's own names, never a caller's input."""
        values = {**fields, "created_by": by.label, "created_at": time.time()}
        marks = ",".join("?" * len(values))
        row_id = self._write(
            f"INSERT INTO {table} ({', '.join(values)}) VALUES ({marks})", tuple(values.values())
        )
        row = self._written(f"SELECT * FROM {table} WHERE id = ?", (row_id,))
        assert row is not None  # inserted just now, on this connection
        return row

    def row(self, table: Table, row_id: int) -> dict[str, Any] | None:
        rows = self._rows(f"SELECT * FROM {table} WHERE id = ?", (row_id,))
        return rows[0] if rows else None

    def page(
        self, table: Table | Literal["audit"], limit: int, before_id: int | None
    ) -> list[dict[str, Any]]:
        """Rows newest first: the `limit` below id `before_id` (none: from the newest)."""
        return self._rows(
            f"SELECT * FROM {table} WHERE id < ? ORDER BY id DESC LIMIT ?",
            (_below(before_id), limit),
        )

    def _stamp(self, table: Table, row_id: int, column: str) -> dict[str, Any] | None:
        """Note now in a row's `column`; the row as it then stands."""
        self._write(f"UPDATE {table} SET {column} = ? WHERE id = ?", (time.time(), row_id))
        return self._written(f"SELECT * FROM {table} WHERE id = ?", (row_id,))

    # --- alarms -----------------------------------------------------------------------
    def store_alarm(self, alarm: dict[str, Any]) -> None:
        """An alarm raised in memory (its id given there), as it stands."""
        columns = ", ".join(alarm)
        self._write(
            f"INSERT OR REPLACE INTO alarms ({columns}) VALUES ({', '.join('?' * len(alarm))})",
            tuple(alarm.values()),
        )

    def clear_alarm(self, alarm_id: int, at_s: float) -> None:
        self._write("UPDATE alarms SET cleared_at = ? WHERE id = ?", (at_s, alarm_id))

    def max_alarm_id(self) -> int:
        return self._rows("SELECT coalesce(max(id), 0) AS n FROM alarms")[0]["n"]

    def alarms(
        self, active_only: bool = False, limit: int = 200, before_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Alarms, newest first: those below id `before_id`."""
        active = "AND cleared_at IS NULL" if active_only else ""
        return self._rows(
            f"SELECT * FROM alarms WHERE id < ? {active} ORDER BY id DESC LIMIT ?",
            (_below(before_id), limit),
        )

    def ack_alarm(
        self, alarm_id: int, by: Actor, at_s: float | None = None
    ) -> dict[str, Any] | None:
        """Acknowledge a stored alarm, with its audit entry, in one transaction; its row as it
        then stands (None: no such alarm). One acknowledged before stays as it was."""
        with self.transaction():
            row = self._written("SELECT * FROM alarms WHERE id = ?", (alarm_id,))
            if row is None or row["acked_at"] is not None:
                return row
            self._write(
                "UPDATE alarms SET acked_at = ?, acked_by = ? WHERE id = ?",
                (time.time() if at_s is None else at_s, by.label, alarm_id),
            )
            self.audit(by, "alarm.ack", None, {"id": alarm_id})
            return self._written("SELECT * FROM alarms WHERE id = ?", (alarm_id,))

    def prune(self, before_s: float, notices_before_s: float | None = None) -> None:
        """Delete audit entries, cleared alarms and ended or cancelled events older than
        `before_s` (unix time), notices over or cancelled before `notices_before_s` (default:
        `before_s`). Keys, settings and anything still active or pending stay."""
        notices_before = before_s if notices_before_s is None else notices_before_s
        with self._lock:
            self._conn.execute(
                "DELETE FROM notices WHERE min(ends_s, coalesce(cancelled_at, ends_s)) < ?",
                (notices_before,),
            )
            self._conn.execute("DELETE FROM audit WHERE time_s < ?", (before_s,))
            self._conn.execute("DELETE FROM alarms WHERE cleared_at < ?", (before_s,))
            self._conn.execute(
                "DELETE FROM dr_events WHERE coalesce(ended_at, cancelled_at, end_s) < ?"
                " AND (ended_at IS NOT NULL OR cancelled_at IS NOT NULL OR end_s < ?)",
                (before_s, before_s),
            )

    # --- audit ------------------------------------------------------------------------
    def audit(self, by: Actor, action: str, old: Any, new: Any) -> None:
        self._write(
            "INSERT INTO audit (time_s, key_id, key_name, action, old, new) VALUES (?,?,?,?,?,?)",
            (time.time(), by.key_id, by.name, action, json.dumps(old), json.dumps(new)),
        )

    def audit_page(self, limit: int, before_id: int | None) -> list[dict[str, Any]]:
        rows = self.page("audit", limit, before_id)
        for r in rows:
            r["old"], r["new"] = json.loads(r["old"]), json.loads(r["new"])
        return rows

    # --- high availability: the journal of the replicated tables ---------------------
    def set_journalling(self, on: bool) -> None:
        """Journal changes to the replicated tables (HA on) or not. The flag is in the file:
        a controller sets it at every start from its site file. Off empties the journal."""
        with self.transaction():
            self._write("UPDATE ha_config SET enabled = ? WHERE one = 1", (int(on),))
            if not on:
                self._write("DELETE FROM ha_journal")

    def journalling(self) -> bool:
        return bool(self._rows("SELECT enabled FROM ha_config WHERE one = 1")[0]["enabled"])

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """The reading connection in one read transaction: every query inside sees the file
        as of one moment."""
        with self._read_lock:
            self._reader.execute("BEGIN")
            try:
                yield self._reader
            finally:
                self._reader.execute("COMMIT")

    def journal(self, limit: int) -> list[JournalEntry]:
        """The oldest `limit` entries, each with its row as it stands now (None: gone since).
        One read: the rows are those of the same moment as the entries."""
        with self._snapshot() as read:
            entries = read.execute(
                "SELECT seq, tbl, pk FROM ha_journal ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
            found = []
            for seq, table, pk in entries:
                row = read.execute(
                    f"SELECT * FROM {_replicated(table)} WHERE {REPLICATED[table]} = ?",
                    (_key_value(table, pk),),
                ).fetchone()
                found.append((seq, table, pk, dict(row) if row is not None else None))
        return found

    def forget_journal(self, upto_seq: int) -> int:
        """Drop the entries up to `upto_seq` (published); how many went."""
        with self._lock:
            return self._conn.execute("DELETE FROM ha_journal WHERE seq <= ?", (upto_seq,)).rowcount

    def journal_size(self) -> int:
        return self._rows("SELECT count(*) AS n FROM ha_journal")[0]["n"]

    def replicated_rows(self) -> tuple[dict[str, list[dict[str, Any]]], int]:
        """Every row of the replicated tables and the journal's last seq, of one moment: what a
        first leader seeds the shared state with (entries up to that seq are in the rows)."""
        with self._snapshot() as read:
            rows = {
                table: [dict(r) for r in read.execute(f"SELECT * FROM {table}")]
                for table in REPLICATED
            }
            upto = read.execute("SELECT coalesce(max(seq), 0) FROM ha_journal").fetchone()[0]
        return rows, upto

    def replace_replicated(self, rows_by_table: dict[str, list[dict[str, Any]]]) -> None:
        """One transaction: the replicated tables hold the given rows and nothing else (a table
        not given is emptied), and the journal is emptied: the file is the shared state now, and
        changes never published are superseded by it."""
        unknown = set(rows_by_table) - set(REPLICATED)
        if unknown:
            raise ValueError(f"not replicated tables: {', '.join(sorted(unknown))}")
        with self.transaction():
            for table in REPLICATED:
                self._write(f"DELETE FROM {table}")
                for row in rows_by_table.get(table, []):
                    self._upsert(table, row)
            self._write("DELETE FROM ha_journal")

    def apply_replicated(self, changes: list[Change]) -> None:
        """One transaction: each row stored (over the one with its key) or deleted, in order;
        not journalled (they come from the shared state, not from this node). The journal is
        emptied too: a node that takes the shared state's changes is a standby, and what it
        changed itself is superseded (it loads the state whole before it leads), so a
        standby's own writes (its hourly prune) never pile up in it."""
        with self.transaction():
            for table, pk, row in changes:
                if row is None:
                    self._write(
                        f"DELETE FROM {_replicated(table)} WHERE {REPLICATED[table]} = ?",
                        (_key_value(table, pk),),
                    )
                else:
                    self._upsert(table, row)
            self._write("DELETE FROM ha_journal")

    def _upsert(self, table: str, row: dict[str, Any]) -> None:
        """In a transaction: a replicated row over the one with its key. Its columns come from
        etcd: each must be one of the table's (never an arbitrary name in the SQL)."""
        columns = self._columns.get(table)
        if columns is None:
            with self._lock:
                names = self._conn.execute(f"PRAGMA table_info({_replicated(table)})")
                columns = self._columns[table] = frozenset(r["name"] for r in names)
        strange = set(row) - columns
        if strange or REPLICATED[table] not in row:
            raise ValueError(
                f"a replicated {table} row with columns {sorted(row)}: the table has "
                f"{sorted(columns)}, keyed by {REPLICATED[table]}"
            )
        self._write(
            f"INSERT OR REPLACE INTO {table} ({', '.join(row)})"
            f" VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )


def _replicated(table: str) -> str:
    """`table`, checked to be a replicated one (its name goes into SQL)."""
    if table not in REPLICATED:
        raise ValueError(f"{table!r} is not a replicated table ({', '.join(REPLICATED)})")
    return table


def _key_value(table: str, pk: str) -> str | int:
    """A journal's or etcd's text key as the table's key column holds it."""
    return pk if table in _TEXT_KEYS else int(pk)


def parse_token(token: str) -> tuple[str, str]:
    """`gp_<id>_<secret>` → (id, secret). A key made elsewhere (e.g. GRIDPILOT_API_KEY) has
    no id in it: its id is derived from it, and all of it is the secret."""
    parts = token.split("_", 2)
    if len(parts) == 3 and parts[0] == "gp" and parts[1] and parts[2]:
        return parts[1], parts[2]
    return "x" + hashlib.sha256(token.encode()).hexdigest()[:11], token
