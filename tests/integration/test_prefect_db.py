"""The snapshot of the installed Prefect is what Prefect's own migrations and its start's block registration make:
the same tables, columns, constraints, indexes and rows (only the order of a rebuilt table's constraints may differ,
as it does between two runs of the migrations themselves, and the ids and times a registration generates), made
with the Prefect collections installed."""

from __future__ import annotations

import sqlite3
from importlib import metadata

from commands import prefect_db


def test_the_snapshot_is_what_the_installed_prefects_migrations_and_registration_make(tmp_path):
    migrated = prefect_db.registered(tmp_path / "migrated")
    if not prefect_db.snapshot_path().exists():  # a Prefect without a snapshot: the server migrates, nothing seeded
        assert not prefect_db.seed(tmp_path / "seeded", env={})
        assert not (tmp_path / "seeded" / "prefect.db").exists()
        return
    assert prefect_db.seed(tmp_path / "seeded", env={})
    want_schema, want_rows = prefect_db.contents(migrated)
    got_schema, got_rows = prefect_db.contents(tmp_path / "seeded" / "prefect.db")
    refresh = f"refresh the snapshot of Prefect {metadata.version('prefect')}: python -m commands.prefect_db"
    assert set(got_schema) == set(want_schema), refresh
    assert got_schema == want_schema
    assert got_rows["alembic_version"] == want_rows["alembic_version"], refresh
    if not prefect_db.holds_registration():
        # other Prefect collections installed than the snapshot was made with: a server seeded from it registers
        # their block types at its first start as ever (first_start() keeps the registration on then), so only the
        # schema and the revision above (its first start checks no migrations) must be the installed Prefect's
        return
    assert got_rows == want_rows, refresh
    assert list(want_rows["alembic_version"]) and len(want_rows["block_type"]) > 10 and want_rows["block_schema"]

    # A snapshot missing one block schema (a Prefect that registers one more) is told apart.
    with sqlite3.connect(tmp_path / "seeded" / "prefect.db") as connection:
        connection.execute("DELETE FROM block_schema WHERE rowid = (SELECT max(rowid) FROM block_schema)")
    connection.close()
    assert prefect_db.contents(tmp_path / "seeded" / "prefect.db")[1] != want_rows
