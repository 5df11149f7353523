"""`gridpilot keys` and `gridpilot db`: the API keys and the SQLite file of a site, worked on
directly (the controller may run: the file takes one writer at a time)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from controller import dbfile
from controller.cli_common import (
    CLI,
    ConfigOpt,
    DataDirOpt,
    refused,
    site_of,
    storage_errors_said,
)
from controller.commands import KeyIn
from controller.dbfile import DB_FILE
from controller.opsdb import ROLES, Conflict, OpsDB

keys_app = typer.Typer(help="API keys: create, list, revoke (in the site's SQLite file).")


def _opsdb(config: Path | None, data_dir: Path | None) -> OpsDB:
    site = site_of(config, None, data_dir)
    with storage_errors_said():
        return OpsDB(site.data_dir / DB_FILE, site.limits)


@keys_app.command("create")
def keys_create(
    role: Annotated[
        str, typer.Option("--role", help="viewer, operator, admin, or workload (notices only)")
    ],
    name: Annotated[str, typer.Option("--name", help="who or what holds it")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a key and print it once: only its salted hash is kept."""
    if role not in ROLES:
        raise refused(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
    try:
        KeyIn(name=name, role=role)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise refused(f"--name: {exc.errors()[0]['msg']}") from None
    db = _opsdb(config, data_dir)
    try:
        key_id, token = db.create_key(name, role, CLI)  # type: ignore[arg-type]
    except Conflict as exc:
        raise refused(exc) from None
    finally:
        db.close()
    typer.echo(f"id    {key_id}\nrole  {role}\nname  {name}\nkey   {token}")
    typer.echo("(the key is shown only now)", err=True)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Every key: id, role, name, when made and revoked (never the key)."""
    from controller.state import iso

    db = _opsdb(config, data_dir)
    try:
        typer.echo(f"{'id':14} {'role':9} {'state':8} {'created':24} {'revoked':24} name")
        for k in db.api_keys():
            state = "revoked" if k["revoked_at"] else "active"
            revoked = iso(k["revoked_at"]) if k["revoked_at"] else "-"
            typer.echo(
                f"{k['id']:14} {k['role']:9} {state:8} {iso(k['created_at']):24} "
                f"{revoked:24} {k['name']}"
            )
    finally:
        db.close()


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    db = _opsdb(config, data_dir)
    try:
        if not db.revoke_key(key_id, CLI):
            raise refused(f"no active key {key_id!r}")
    except Conflict as exc:
        raise refused(exc) from None
    finally:
        db.close()
    typer.echo(f"revoked {key_id}")


db_app = typer.Typer(help="The SQLite file: check it, back it up (online), restore a backup.")


def _db_path(config: Path | None, data_dir: Path | None) -> Path:
    return site_of(config, None, data_dir).data_dir / DB_FILE


@db_app.command("check")
def db_check(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """SQLite's full integrity check of the site's file; exit 2 if anything is wrong."""
    path = _db_path(config, data_dir)
    if not path.exists():
        raise refused(f"no database at {path}")
    found = dbfile.problems(path, full=True, ours=True)
    for problem in found:
        typer.echo(f"{path}: {problem}", err=True)
    if found:
        raise typer.Exit(2)
    typer.echo(f"{path}: ok")


@db_app.command("backup")
def db_backup(
    out: Annotated[Path, typer.Argument(help="the backup file to write")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Copy the site's file through SQLite's backup API: consistent while the controller runs."""
    path = _db_path(config, data_dir)
    with storage_errors_said():
        dbfile.backup(path, out)
    typer.echo(f"backed up {path} to {out}")


@db_app.command("restore")
def db_restore(
    backup_file: Annotated[Path, typer.Argument(help="a file `gridpilot db backup` made")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Put a backup in place of the site's file; stop the controller first. The backup is
    checked whole before anything is replaced."""
    path = _db_path(config, data_dir)
    with storage_errors_said():
        dbfile.restore(path, backup_file)
    typer.echo(f"restored {path} from {backup_file}")
