"""The trial store on both back ends: schema by migration, settings, all-or-nothing writes."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from evalkit.store import (
    HEAD_REVISION,
    DuplicateRecord,
    PilotRecord,
    Store,
    VersionRecord,
    metadata,
    normalise_url,
)


def pilot(pid="p-one", uid="u1") -> PilotRecord:
    return PilotRecord(pid, uid, "c" * 64, "2026-11-24T10:00:00.000000Z", "{}")


def version(pid="p-one", number=1, h="h1") -> VersionRecord:
    return VersionRecord(pid, number, "1.0", h, "{}", "2026-11-24T10:00:00.000000Z", "me", "0.1.0")


def test_open_applies_migrations_and_tables_match_the_model(store):
    with store.read() as conn:
        assert (
            conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
        )
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []


def test_reopening_is_idempotent(store_url):
    Store.open(store_url).close()
    s = Store.open(store_url)
    s.create_pilot(pilot(), version())
    s.close()
    s = Store.open(store_url)
    assert s.pilot_ids() == ["p-one"]
    s.close()


def test_sqlite_settings(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path / 'e.db'}")
    with s.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    s.close()


def test_pilot_and_first_version_are_written_together_or_not_at_all(store):
    bad = VersionRecord("p-one", 1, "1.0", "h1", None, "t", "me", "0.1.0")  # canonical NOT NULL
    with pytest.raises(Exception):  # noqa: B017 - the database's own integrity error
        store.create_pilot(pilot(), bad)
    assert store.pilot("p-one") is None
    assert store.versions("p-one") == []
    store.create_pilot(pilot(), version())
    assert store.pilot("p-one") == pilot()
    assert store.versions("p-one") == [version()]


def test_duplicates_are_refused(store):
    store.create_pilot(pilot(), version())
    with pytest.raises(DuplicateRecord):
        store.create_pilot(pilot(uid="u2"), version())
    store.add_version(version(number=2, h="h2"), expected_number=2)
    with pytest.raises(DuplicateRecord):  # someone else amended first
        store.add_version(version(number=2, h="h3"), expected_number=2)
    with pytest.raises(DuplicateRecord):  # same content twice
        store.add_version(version(number=3, h="h2"), expected_number=3)
    assert [v.number for v in store.versions("p-one")] == [1, 2]


def test_foreign_keys_are_enforced(store):
    from sqlalchemy.exc import IntegrityError

    from evalkit.store import protocol_versions

    with pytest.raises(IntegrityError), store.write() as conn:
        conn.execute(protocol_versions.insert().values(**version(pid="nobody").__dict__))
    assert store.versions("nobody") == []


def test_url_normalisation():
    assert normalise_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_sqlite_store_in_a_folder_that_does_not_exist_is_refused(tmp_path):
    from evalkit.errors import UserError

    with pytest.raises(UserError, match=r"the folder .*nope does not exist") as exc:
        Store.open(f"sqlite:///{tmp_path / 'nope' / 'x.db'}")
    assert not (tmp_path / "nope").exists()
    assert "create the folder" in exc.value.hint


def test_a_store_with_a_newer_schema_is_a_clear_error(store_url):
    from evalkit.errors import UserError

    s = Store.open(store_url)
    with s.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    s.close()
    with pytest.raises(UserError, match="schema revision '0999'") as exc:
        Store.open(store_url)
    assert "newer version of evalkit" in exc.value.message
    assert "upgrade evalkit" in exc.value.hint
    from sqlalchemy import create_engine

    engine = create_engine(normalise_url(store_url))
    with engine.connect() as conn:  # the store is left as it was
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0999"
    engine.dispose()
