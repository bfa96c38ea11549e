"""The schema snapshot of the installed Prefect is what Prefect's own migrations make: the same tables, columns,
constraints, indexes and rows (only the order of a rebuilt table's constraints may differ, as it does between two
runs of the migrations themselves)."""

from __future__ import annotations

from importlib import metadata

from commands import prefect_db


def test_the_snapshot_is_what_the_installed_prefects_migrations_make(tmp_path):
    migrated = prefect_db.migrated(tmp_path / "migrated")
    if not prefect_db.snapshot_path().exists():  # a Prefect without a snapshot: the server migrates, nothing seeded
        assert not prefect_db.seed(tmp_path / "seeded", env={})
        assert not (tmp_path / "seeded" / "prefect.db").exists()
        return
    assert prefect_db.seed(tmp_path / "seeded", env={})
    want_schema, want_rows = prefect_db.contents(migrated)
    got_schema, got_rows = prefect_db.contents(tmp_path / "seeded" / "prefect.db")
    assert set(got_schema) == set(want_schema), (
        f"refresh the snapshot of Prefect {metadata.version('prefect')}: python -m commands.prefect_db"
    )
    assert got_schema == want_schema
    assert got_rows == want_rows and list(want_rows["alembic_version"])
