"""The local Prefect server's first database, from a schema snapshot instead of 116 migrations.

A new Prefect server creates its SQLite database by running every Alembic migration in turn: ~8 s of CPU on two
cores, the largest part of a first run on a machine. The result is always the same for one Prefect version (a schema
and the `alembic_version` row, no other rows), so `commands/prefect_schema/prefect-<version>.sql` holds that result,
dumped from a database the real migrations made. `seed()` writes it to a database file that does not exist yet when
the installed Prefect is that version; the server then finds its database at the head revision and migrates nothing.
Any other version, a database that exists, or a user's own database URL: nothing is written, and Prefect migrates as
it always does (a later Prefect upgrade migrates a seeded database from the revision it records).

    python -m commands.prefect_db    # run the installed Prefect's migrations, write its snapshot
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

SNAPSHOTS = Path(__file__).with_name("prefect_schema")
URL_SETTINGS = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


def snapshot_path(version: str | None = None) -> Path:
    return SNAPSHOTS / f"prefect-{version or metadata.version('prefect')}.sql"


def seed(prefect_home: Path, env: Mapping[str, str] | None = None) -> bool:
    """Create `prefect_home/prefect.db` from the installed Prefect's snapshot; False when there is none to use."""
    settings: Mapping[str, str] = os.environ if env is None else env
    database = prefect_home / "prefect.db"
    snapshot = snapshot_path()
    if any(settings.get(name) for name in URL_SETTINGS) or database.exists() or not snapshot.exists():
        return False
    prefect_home.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(f".prefect.db.{os.getpid()}")
    partial.unlink(missing_ok=True)
    try:
        with sqlite3.connect(partial) as connection:
            connection.executescript(snapshot.read_text())
            connection.execute("PRAGMA journal_mode = WAL")  # as Prefect opens it, and as its migrations leave it
        connection.close()
        os.link(partial, database)  # a server never sees half a schema, and a database made meanwhile is kept
    except FileExistsError:
        return False
    finally:
        partial.unlink(missing_ok=True)
    return True


def dump(database: Path) -> str:
    """The database as SQL: its schema and rows, in SQLite's own dump order."""
    with sqlite3.connect(database) as connection:
        text = "\n".join(connection.iterdump()) + "\n"
    connection.close()
    return text


def contents(database: Path) -> tuple[dict[tuple[str, str], list[str]], dict[str, list[tuple[Any, ...]]]]:
    """What two databases must share to be the same to Prefect: every schema object and every row.

    An object's definition is compared as the set of its lines: SQLAlchemy writes one column or constraint per line,
    and Alembic's table rebuilds on SQLite list a table's constraints in an order that varies from run to run."""
    with sqlite3.connect(database) as connection:
        objects = connection.execute(
            "SELECT type, name, coalesce(sql, '') FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall()
        schema = {
            (type_, name): sorted(line.strip().removesuffix(",").strip() for line in sql.splitlines())
            for type_, name, sql in objects
        }
        rows = {
            name: sorted(connection.execute(f'SELECT * FROM "{name}"'))  # noqa: S608 - names from sqlite_master
            for type_, name, _ in objects
            if type_ == "table"
        }
    connection.close()
    return schema, rows


def migrated(prefect_home: Path) -> Path:
    """A database made by the installed Prefect's own migrations (`prefect server database upgrade`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    subprocess.run(
        [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    return prefect_home / "prefect.db"


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        text = dump(migrated(Path(home)))
    SNAPSHOTS.mkdir(exist_ok=True)
    snapshot_path().write_text(text)
    print(f"wrote {snapshot_path()} ({len(text):,} bytes)")


if __name__ == "__main__":
    main()
