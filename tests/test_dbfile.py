"""The SQLite file as an operator meets it: a damaged or vanished file refused at start with
what to do, an online backup and a checked restore, periodic backups."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import yaml

from controller.service import DB_FILE, Controller
from controller.sitefile import load_site
from tests.processes import GRIDPILOT, create_key, gridpilot, stop_cleanly, wait_http


def gridpilot_cli(*args: str, umask: int = -1) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*GRIDPILOT, *args], capture_output=True, text=True, timeout=120, umask=umask
    )


def refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


def test_a_damaged_file_is_refused_at_start_naming_it(site_file: Path):
    key = create_key(str(site_file), "admin")  # the file exists, with a key in it
    assert key
    db = load_site(site_file).data_dir / DB_FILE
    raw = bytearray(db.read_bytes())
    raw[0:16] = b"this is garbage!"  # the header: no longer SQLite
    db.write_bytes(bytes(raw))
    for args in (["run", "--config", str(site_file)], ["keys", "list", "--config", str(site_file)]):
        refused(gridpilot_cli(*args), str(db), "damaged", "gridpilot db restore")
    refused(gridpilot_cli("db", "check", "--config", str(site_file)), str(db))


def test_an_emptied_file_is_refused_not_silently_remade(site_file: Path):
    create_key(str(site_file), "admin")
    db = load_site(site_file).data_dir / DB_FILE
    db.write_bytes(b"")  # truncated: every key, setpoint and event gone
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    refused(gridpilot_cli("run", "--config", str(site_file)), "is empty", "was made here")
    db.unlink()
    refused(gridpilot_cli("run", "--config", str(site_file)), "is missing")


def test_an_online_backup_restores_the_keys_and_is_checked_first(site_file: Path, tmp_path: Path):
    key = create_key(str(site_file), "operator", "kept")
    backup = tmp_path / "backups" / "gp.sqlite"
    proc = gridpilot_cli("db", "backup", str(backup), "--config", str(site_file))
    assert proc.returncode == 0, proc.stderr
    assert gridpilot_cli("db", "check", "--config", str(site_file)).returncode == 0
    # Elsewhere, a new site restores it: the key made before works there.
    other = tmp_path / "other"
    data = yaml.safe_load(site_file.read_text()) | {"data_dir": str(other)}
    other_site = tmp_path / "other.yaml"
    other_site.write_text(yaml.safe_dump(data))
    proc = gridpilot_cli("db", "restore", str(backup), "--config", str(other_site))
    assert proc.returncode == 0, proc.stderr
    listed = gridpilot_cli("keys", "list", "--config", str(other_site)).stdout
    assert key.split("_")[1] in listed and "kept" in listed
    # A file that is no backup is refused before anything is replaced.
    bogus = tmp_path / "bogus.sqlite"
    bogus.write_bytes(b"not a database at all, just text" * 100)
    refused(gridpilot_cli("db", "restore", str(bogus), "--config", str(other_site)), "bogus")
    assert "kept" in gridpilot_cli("keys", "list", "--config", str(other_site)).stdout


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_periodic_backups_when_due_checked_and_the_newest_kept(site_data: dict, tmp_path: Path):
    from controller import dbfile
    from controller.sitefile import parse_site

    folder = tmp_path / "backups"
    site = parse_site(site_data | {"backup": {"dir": str(folder), "every_h": 1, "keep": 2}})
    controller = Controller(site)
    controller.prune(time.time())  # housekeeping: a backup is due (none yet)
    wait_for(lambda: len(list(folder.glob("gridpilot-demo-*.sqlite"))) == 1)
    controller.prune(time.time())  # a restart's housekeeping: the newest is fresh, none due
    time.sleep(0.5)
    assert len(list(folder.glob("gridpilot-demo-*.sqlite"))) == 1
    for _ in range(3):
        dbfile.periodic_backup(controller.db_path, folder, "demo", keep=2)
    kept = list(folder.glob("gridpilot-demo-*.sqlite"))
    assert len(kept) == 2 and all(not dbfile.problems(f, ours=True) for f in kept)
    controller.close()


def test_a_failing_backup_holds_up_no_other_write(site_data: dict, tmp_path: Path):
    from controller.sitefile import parse_site

    folder = tmp_path / "not-a-folder"
    folder.write_text("a file where the backups should go")
    site = parse_site(site_data | {"backup": {"dir": str(folder)}})
    controller = Controller(site)
    controller.prune(time.time())
    wait_for(lambda: controller.backup_failures_total == 1)
    assert controller.ops_writer.flush(5.0) and not controller.ops_writer.failing
    controller.close()


def test_a_restore_is_refused_while_a_controller_runs_on_the_file(site_data: dict, tmp_path):
    from controller import dbfile
    from controller.dbfile import StorageError
    from controller.sitefile import parse_site

    controller = Controller(parse_site(site_data))
    backup = dbfile.backup(controller.db_path, tmp_path / "b.sqlite")
    try:
        dbfile.restore(controller.db_path, backup)
        raise AssertionError("restored under a running controller")
    except StorageError as exc:
        assert "stop it first" in str(exc)
    controller.close()
    dbfile.restore(controller.db_path, backup)  # stopped: fine


def modes(*paths: Path) -> dict[str, str]:
    """Each path's permission bits, by name, in octal."""
    return {p.name: oct(p.stat().st_mode & 0o777) for p in paths}


def test_the_data_is_its_owners_alone_from_the_start(site_data: dict, tmp_path: Path):
    """With no umask to help (0), what gridpilot makes is its owner's alone: the data folder
    and the backups' 0700, the SQLite file with its -wal and -shm, the marker, the run lock,
    each backup and a restored file 0600 (SQLite never chmods: each is made so)."""
    backups = tmp_path / "backups"
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site_data | {"backup": {"dir": str(backups)}}))
    site = load_site(site_file)
    db = site.data_dir / DB_FILE
    with gridpilot("run", "--config", str(site_file), umask=0) as proc:
        wait_http(f"http://127.0.0.1:{site.api_port}/healthz", proc)
        wait_for(lambda: any(backups.glob("gridpilot-*.sqlite")), 30)  # at start: one is due
        (backup,) = backups.glob("gridpilot-*.sqlite")
        made = [db.with_name(db.name + end) for end in ("", "-wal", "-shm", ".id", ".lock")]
        assert modes(*made, backup) == {p.name: "0o600" for p in (*made, backup)}
        assert modes(site.data_dir, backups) == {"data": "0o700", "backups": "0o700"}
        stop_cleanly(proc, "controller stopped", signal.SIGTERM)
    other = tmp_path / "other"  # a new site restoring it: its folder made, the file put in
    proc = gridpilot_cli("db", "restore", str(backup), "--config", str(site_file),
                         "--data-dir", str(other), umask=0)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert modes(other, other / DB_FILE, other / f"{DB_FILE}.id") == {
        "other": "0o700", DB_FILE: "0o600", f"{DB_FILE}.id": "0o600"
    }  # fmt: skip
