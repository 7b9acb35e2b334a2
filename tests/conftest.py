"""Shared fixtures. Every store test runs on SQLite and on PostgreSQL; the PostgreSQL runs
skip, saying why, when EVALKIT_TEST_PG_URL is unset (.ci/run always sets it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import quote

import pytest

from evalkit.store import Store, normalise_url

REPO = Path(__file__).resolve().parents[1]
#: The day the suite's demos run on: the demo dates its pilots from today, so a fixed day
#: (with its fixed seed) makes every demo the same on every run.
DEMO_DAY = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def travel(at: datetime | date | None):
    """A context in which the clock shows ``at`` (a date means noon UTC that day); no
    change when ``at`` is None."""
    if at is None:
        return contextlib.nullcontext()
    import time_machine

    if not isinstance(at, datetime):
        at = datetime(at.year, at.month, at.day, 12, 0, tzinfo=UTC)
    return time_machine.travel(at, tick=False)


DATA = Path(__file__).with_name("data")
PG_URL = os.environ.get("EVALKIT_TEST_PG_URL")


@pytest.fixture(autouse=True)
def _isolated_keys(tmp_path_factory, monkeypatch):
    """Key files go to a private folder outside any test workspace."""
    keys = tmp_path_factory.mktemp("keys")
    monkeypatch.setenv("EVALKIT_KEY_DIR", str(keys))
    monkeypatch.delenv("EVALKIT_DATABASE_URL", raising=False)
    monkeypatch.setenv("EVALKIT_USER", "test-evaluator")
    return keys


@pytest.fixture(autouse=True, scope="session")
def _seeded_secrets():
    """Registration draws each pilot's secret from the operating system; in the suite it
    comes from the pilot's id and registration time instead, so that no test depends on a
    draw it did not seed: the same test makes the same allocations (and the same
    randomisation p-values) on every run and whichever tests run with it. A test that
    replaces evalkit.keys.secrets itself keeps its own secrets."""
    import hashlib
    import secrets
    from unittest import mock

    import evalkit.keys
    from evalkit.keys import KeyRing

    real = KeyRing.create

    def create(self, pilot_id, uid, created_at, secret=None):
        if secret is None and evalkit.keys.secrets is secrets:
            seed = f"evalkit test secret/{pilot_id}/{created_at}"
            secret = hashlib.sha256(seed.encode()).digest()
        return real(self, pilot_id, uid, created_at, secret)

    with mock.patch.object(KeyRing, "create", create):
        yield


@pytest.fixture
def key_dir(_isolated_keys) -> Path:
    return _isolated_keys


def _pg_schema_url(schema: str) -> str:
    base = normalise_url(PG_URL or "")
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A URL for an empty store on each back end (a fresh schema on PostgreSQL)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'evalkit.db'}"
        return
    if not PG_URL:
        pytest.skip("PostgreSQL tests need EVALKIT_TEST_PG_URL (set by .ci/run)")
    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(PG_URL))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(store_url):
    s = Store.open(store_url)
    yield s
    s.close()


@pytest.fixture
def workspace(tmp_path) -> Path:
    """An empty workspace with the flagship protocols copied in."""
    ws = tmp_path / "ws"
    (ws / "protocols").mkdir(parents=True)
    (ws / "analyses").mkdir()
    for name in ("hackney-keyworker", "hackney-estates", "hackney-front-door"):
        shutil.copy(REPO / "protocols" / f"{name}.yaml", ws / "protocols" / f"{name}.yaml")
    return ws


@pytest.fixture
def cli_in(tmp_path, store_url):
    """`evalkit ...` as a user runs it, in a fresh workspace on each back end: checks the
    exit code (``ok``) and that no traceback is ever shown."""
    from click.testing import CliRunner

    from cli import cli

    ws = tmp_path / "ws"
    ws.mkdir()

    def _run(*args: str, ok: int | None = 0, at: datetime | date | None = None):
        """``at``: run as if the clock showed that moment (dates are checked against it)."""
        with travel(at):
            res = CliRunner().invoke(
                cli, ["--workspace", str(ws), "--store", store_url, *args], catch_exceptions=False
            )
        if ok is not None:
            assert res.exit_code == ok, res.output
        assert "Traceback" not in res.output
        return res

    _run.ws = ws
    _run.tmp = tmp_path
    return _run


def run_demo(target: Path, *args: str):
    """`evalkit demo --dir TARGET` as a user runs it, on DEMO_DAY (its seed is fixed, so
    every run gives the same pilots). Returns the CLI result; the demo's keys are in
    ``key_dir(target)``, beside it."""
    from click.testing import CliRunner

    from cli import cli

    with travel(DEMO_DAY):
        return CliRunner().invoke(cli, ["demo", "--dir", str(target), *args])


def demo_keys(target: Path) -> Path:
    from evalkit.demo import key_dir

    return key_dir(target.resolve())


@pytest.fixture(scope="session")
def demo_reports(tmp_path_factory) -> Path:
    """One demo workspace for the whole run, with every report written, as a user gets it
    from `evalkit demo`."""
    root = tmp_path_factory.mktemp("demo-reports") / "demo"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("EVALKIT_DATABASE_URL", raising=False)
        mp.setenv("EVALKIT_USER", "test-evaluator")
        res = run_demo(root)
        assert res.exit_code == 0, res.output
    return root
