"""The local Prefect server's first database, from a snapshot instead of 116 migrations and a block registration.

A new Prefect server creates its SQLite database by running every Alembic migration in turn: ~8 s of CPU on two
cores, the largest part of a first run on a machine. It then registers every block type it knows (its own, those of
the Prefect collections installed, those its collections list names) and their schemas: ~1 s more. Both results are
always the same for one Prefect version and one set of installed collections, so
`commands/prefect_schema/prefect-<version>.sql` holds them, dumped from a database the real migrations and the real
registration made. Its first line names the collections it was made with. `seed()` writes it to a database file that
does not exist yet when the installed Prefect is that version; the server then finds its database at the head
revision and migrates nothing. Any other version, a database that exists, or a user's own database URL: nothing is
written, and Prefect migrates as it always does (a later Prefect upgrade migrates a seeded database from the revision
it records).

A seeded server is started with `first_start()`'s settings. Its migrations are off: the database is at the head
revision of the installed Prefect, so the check alone would cost that start 0.2-0.9 CPU s (importing Alembic, reading
its 116 migration scripts); the starts after it migrate as always (a Prefect upgrade). Its block registration is off
when the collections installed are those the snapshot was made with: its database already holds what it would
register, and Prefect's memo of the registration (`memo_store.toml`, a hash of the block registry and the database
URL) is written by that start itself, so the starts after it skip the registration too. Other collections installed:
the server registers as it always does (it updates what is there and adds the rest).

    python -m commands.prefect_db    # run the installed Prefect's migrations and registration, write its snapshot
"""

from __future__ import annotations

import json
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
COLLECTIONS_LINE = "-- prefect collections: "
REGISTER = """
import asyncio

import prefect.plugins
import prefect.server.api.server  # what a server start has imported when it registers
from prefect.server.database import provide_database_interface
from prefect.server.models.block_registration import run_block_auto_registration


async def register():
    prefect.plugins.load_prefect_collections()  # as Prefect's start does before it registers
    db = provide_database_interface()
    async with await db.session() as session:
        await run_block_auto_registration(session=session)
    await (await db.engine()).dispose()


asyncio.run(register())
"""


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


def first_start() -> dict[str, str]:
    """Prefect settings for the start of a server whose database `seed()` just wrote (see the module's docstring)."""
    settings = {"PREFECT_API_DATABASE_MIGRATE_ON_START": "false"}
    if holds_registration():
        settings["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] = "false"
    return settings


def collections() -> str:
    """The Prefect collections installed (`name version`, comma-separated): they add block types to register."""
    found = {
        (entry.name, entry.dist.version if entry.dist else "")
        for entry in metadata.entry_points(group="prefect.collections")
    }
    return ", ".join(f"{name} {version}" for name, version in sorted(found))


def holds_registration(snapshot: Path | None = None) -> bool:
    """Whether the snapshot holds the block registration a server with the installed collections would make."""
    with (snapshot or snapshot_path()).open() as text:
        first = text.readline().rstrip("\n")
    return first == COLLECTIONS_LINE + collections()


def dump(database: Path) -> str:
    """The database as SQL: the collections installed, then its schema and rows in SQLite's own dump order."""
    with sqlite3.connect(database) as connection:
        text = "\n".join([COLLECTIONS_LINE + collections(), *connection.iterdump()]) + "\n"
    connection.close()
    return text


GENERATED = ("id", "created", "updated")  # made anew by each registration: a row's identity is its natural key
NATURAL_KEYS = {"block_type": ("slug",), "block_schema": ("checksum", "version")}
SETS = ("capabilities",)  # JSON lists Prefect builds from a set: their order varies from one process to the next


def contents(database: Path) -> tuple[dict[tuple[str, str], list[str]], dict[str, list[tuple[Any, ...]]]]:
    """What two databases must share to be the same to Prefect: every schema object and every row.

    An object's definition is compared as the set of its lines: SQLAlchemy writes one column or constraint per line,
    and Alembic's table rebuilds on SQLite list a table's constraints in an order that varies from run to run.
    A row is compared without its generated id and times, an id it refers to by what that id names (a block type's
    slug, a block schema's checksum and version), and a block schema's capabilities as a set."""
    with sqlite3.connect(database) as connection:
        objects = connection.execute(
            "SELECT type, name, coalesce(sql, '') FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall()
        schema = {
            (type_, name): sorted(line.strip().removesuffix(",").strip() for line in sql.splitlines())
            for type_, name, sql in objects
        }
        tables = {name: _rows(connection, name) for type_, name, _ in objects if type_ == "table"}
    connection.close()
    names = {
        row["id"]: f"{table}:" + "/".join(str(row[key]) for key in keys)
        for table, keys in NATURAL_KEYS.items()
        for row in tables.get(table, [])
    }
    rows = {
        table: sorted(
            tuple(_value(column, value, names) for column, value in row.items() if column not in GENERATED)
            for row in table_rows
        )
        for table, table_rows in tables.items()
    }
    return schema, rows


def _value(column: str, value: Any, names: Mapping[str, str]) -> Any:
    if column in SETS and isinstance(value, str):
        return json.dumps(sorted(json.loads(value)))
    return names.get(value, value) if isinstance(value, str) else value


def _rows(connection: sqlite3.Connection, table: str) -> list[dict[str, Any]]:
    cursor = connection.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - names from sqlite_master
    columns = [column[0] for column in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor]


def _prefect(args: list[str], prefect_home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    subprocess.run(
        [sys.executable, *args],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def migrated(prefect_home: Path) -> Path:
    """A database made by the installed Prefect's own migrations (`prefect server database upgrade`)."""
    _prefect(["-m", "prefect", "server", "database", "upgrade", "-y"], prefect_home)
    return prefect_home / "prefect.db"


def registered(prefect_home: Path) -> Path:
    """A database made by the installed Prefect's migrations and then its start's block registration."""
    database = migrated(prefect_home)
    _prefect(["-c", REGISTER], prefect_home)
    return database


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        text = dump(registered(Path(home)))
    SNAPSHOTS.mkdir(exist_ok=True)
    snapshot_path().write_text(text)
    print(f"wrote {snapshot_path()} ({len(text):,} bytes)")


if __name__ == "__main__":
    main()
