"""The local Prefect server's first database from the schema snapshot: written only when it can be, atomically, at
the snapshot's revision. (That the snapshot is what the migrations make: tests/integration/test_prefect_db.py.)"""

from __future__ import annotations

import os
import re
import sqlite3

import pytest

from commands import prefect_db

needs_snapshot = pytest.mark.skipif(
    not prefect_db.snapshot_path().exists(), reason="no schema snapshot for the installed Prefect (the server migrates)"
)


def _revision(sql: str) -> str:
    return re.search(r"""INSERT INTO "alembic_version" VALUES\('(\w+)'\);""", sql).group(1)


@needs_snapshot
def test_a_new_database_is_the_snapshot_at_its_revision_in_wal_mode(tmp_path):
    home = tmp_path / "prefect"
    assert prefect_db.seed(home, env={})
    assert sorted(p.name for p in home.iterdir()) == ["prefect.db"]  # no partial file left behind
    with sqlite3.connect(home / "prefect.db") as connection:
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        slugs = {slug for (slug,) in connection.execute("SELECT slug FROM block_type")}
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    assert revision == [(_revision(prefect_db.snapshot_path().read_text()),)]
    assert {"flow_run", "task_run", "artifact", "block_document", "deployment_version"} <= tables
    assert {"secret", "local-file-system", "webhook"} <= slugs  # what a server start registers is there already
    assert mode == "wal"


@needs_snapshot
def test_an_existing_database_is_never_touched(tmp_path):
    home = tmp_path / "prefect"
    home.mkdir()
    (home / "prefect.db").write_bytes(b"a user's database")
    assert not prefect_db.seed(home, env={})
    assert (home / "prefect.db").read_bytes() == b"a user's database"


@needs_snapshot
@pytest.mark.parametrize("setting", prefect_db.URL_SETTINGS)
def test_a_database_url_of_the_users_own_is_left_to_prefect(tmp_path, setting):
    assert not prefect_db.seed(tmp_path / "prefect", env={setting: "postgresql+asyncpg://db/prefect"})
    assert not (tmp_path / "prefect").exists()


@needs_snapshot
def test_a_database_made_meanwhile_is_kept(tmp_path, monkeypatch):
    """Two first starts at once: the one that loses the race keeps the other's database, not its own."""
    home = tmp_path / "prefect"
    real_link = prefect_db.os.link

    def link_after_another(src, dst):
        (home / "prefect.db").write_bytes(b"the other start's database")
        return real_link(src, dst)

    monkeypatch.setattr(prefect_db.os, "link", link_after_another)
    assert not prefect_db.seed(home, env={})
    assert (home / "prefect.db").read_bytes() == b"the other start's database"
    assert sorted(p.name for p in home.iterdir()) == ["prefect.db"]


def test_another_prefect_version_migrates_as_usual(tmp_path, monkeypatch):
    monkeypatch.setattr(prefect_db.metadata, "version", lambda name: "3.0.0rc1")
    assert not prefect_db.seed(tmp_path / "prefect", env={})
    assert not (tmp_path / "prefect" / "prefect.db").exists()


def test_a_schema_that_fails_to_load_leaves_no_database(tmp_path, monkeypatch):
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    (snapshots / "prefect-9.9.9.sql").write_text("CREATE TABLE a (x);\nTHIS IS NOT SQL;\n")
    monkeypatch.setattr(prefect_db, "SNAPSHOTS", snapshots)
    monkeypatch.setattr(prefect_db.metadata, "version", lambda name: "9.9.9")
    with pytest.raises(sqlite3.OperationalError):
        prefect_db.seed(tmp_path / "prefect", env={})
    assert list((tmp_path / "prefect").iterdir()) == []


def test_a_snapshot_holds_the_registration_only_of_the_collections_it_names(tmp_path, monkeypatch):
    """Other Prefect collections installed add block types: the server then registers as it always does."""
    snapshot = tmp_path / "prefect-9.9.9.sql"
    snapshot.write_text(prefect_db.COLLECTIONS_LINE + "prefect_dask 0.3.7\nBEGIN TRANSACTION;\n")
    monkeypatch.setattr(prefect_db, "collections", lambda: "prefect_dask 0.3.7")
    assert prefect_db.holds_registration(snapshot)
    monkeypatch.setattr(prefect_db, "collections", lambda: "prefect_aws 0.5.0, prefect_dask 0.3.7")
    assert not prefect_db.holds_registration(snapshot)
    snapshot.write_text("BEGIN TRANSACTION;\n")  # a snapshot of the schema alone
    assert not prefect_db.holds_registration(snapshot)


@needs_snapshot
def test_the_embedded_server_s_first_database_is_seeded_too(tmp_path, monkeypatch):
    """`ROLLOUTS_SERVER=ephemeral`: Prefect's per-run server keeps its database in PREFECT_HOME; the command seeds
    it when it does not exist yet (the server it starts inherits `first_start()`'s settings), and never touches one
    that does. (A whole run on a seeded embedded server: tests/cli/test_run_messages.py.)"""
    from commands import server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("ROLLOUTS_SERVER", "ephemeral")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    first = prefect_db.first_start()
    for name in (*prefect_db.URL_SETTINGS, *first):
        monkeypatch.delenv(name, raising=False)
    assert server.use_prefect_server() is None
    with sqlite3.connect(tmp_path / "prefect-home" / "prefect.db") as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision == _revision(prefect_db.snapshot_path().read_text())
    assert {k: os.environ.get(k) for k in first} == first
    for name in first:
        monkeypatch.delenv(name, raising=False)
    before = (tmp_path / "prefect-home" / "prefect.db").stat().st_mtime_ns
    assert server.use_prefect_server() is None  # the next run: the database is there, Prefect registers as usual
    assert (tmp_path / "prefect-home" / "prefect.db").stat().st_mtime_ns == before
    assert not any(name in os.environ for name in first)


def test_a_seeded_server_starts_with_no_migration_check_and_registers_only_what_its_database_lacks(monkeypatch):
    monkeypatch.setattr(prefect_db, "holds_registration", lambda: True)
    assert prefect_db.first_start() == {
        "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
        "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    }
    monkeypatch.setattr(prefect_db, "holds_registration", lambda: False)  # other collections installed
    assert prefect_db.first_start() == {"PREFECT_API_DATABASE_MIGRATE_ON_START": "false"}
