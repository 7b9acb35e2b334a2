"""The trial store: the one place where pilots, registrations and their history persist.

SQLAlchemy Core over SQLite (the embedded default) or PostgreSQL (several sites at once).
The schema is owned by Alembic migrations in ``evalkit/migrations`` and upgraded when a
store is opened; the tables below mirror it for queries (a test keeps the two equal).
Every write runs in one transaction that holds the store's write lock, so a record is
either written whole or not at all.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from evalkit.canonical import canonical_json
from evalkit.errors import UserError
from evalkit.ledger import Entry

HEAD_REVISION = "0003"
MIGRATIONS = Path(__file__).with_name("migrations")

metadata = MetaData()

pilots = Table(
    "pilots",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("uid", String(32), nullable=False, unique=True),
    Column("secret_commitment", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("environment", Text, nullable=False),
    Column("log_count", Integer, nullable=False, server_default="0"),
    Column("log_head", String(64)),
)

protocol_versions = Table(
    "protocol_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pilot_id", String(64), ForeignKey("pilots.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("protocol_version", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("canonical", Text, nullable=False),
    Column("registered_at", String(32), nullable=False),
    Column("registered_by", String(128), nullable=False),
    Column("evalkit_version", String(32), nullable=False),
    Column("reason", Text),
    Column("changes", Text),
    UniqueConstraint("pilot_id", "number", name="uq_protocol_versions_number"),
    UniqueConstraint("pilot_id", "hash", name="uq_protocol_versions_hash"),
)


log = Table(
    "log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pilot_id", String(64), ForeignKey("pilots.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("level", String(16)),
    Column("unit", String(128)),
    Column("unit_key", String(128)),
    Column("stratum", String(256)),
    Column("place", String(128)),
    Column("arm", String(64)),
    Column("probabilities", Text),
    Column("detail", Text, nullable=False),
    Column("baseline", Text, nullable=False),
    Column("protocol_hash", String(64), nullable=False),
    Column("protocol_number", Integer, nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    UniqueConstraint("pilot_id", "seq", name="uq_log_seq"),
    UniqueConstraint("pilot_id", "unit_key", name="uq_log_unit"),
    Index("ix_log_stratum", "pilot_id", "kind", "stratum"),
)

imports = Table(
    "imports",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pilot_id", String(64), ForeignKey("pilots.id"), nullable=False),
    Column("source", String(32), nullable=False),
    Column("file_name", String(512), nullable=False),
    Column("file_sha256", String(64), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("outcomes", Text, nullable=False),
    Column("as_of", String(10), nullable=False),
    Column("imported_at", String(32), nullable=False),
    Column("imported_by", String(128), nullable=False),
    Column("correction_reason", Text),
)

observations = Table(
    "observations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pilot_id", String(64), ForeignKey("pilots.id"), nullable=False),
    Column("unit", String(128), nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("obs_key", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("value", Float),
    Column("start_date", String(10)),
    Column("end_date", String(10)),
    Column("on_date", String(10)),
    Column("version", Integer, nullable=False),
    Column("import_id", Integer, ForeignKey("imports.id"), nullable=False),
    UniqueConstraint(
        "pilot_id", "unit", "outcome", "obs_key", "version", name="uq_observation_version"
    ),
    Index("ix_observations_pilot", "pilot_id", "outcome"),
)


@dataclass(frozen=True)
class ImportRecord:
    """One file imported from one agency: the data vintage of every record it brought."""

    pilot_id: str
    source: str
    file_name: str
    file_sha256: str
    rows: int
    outcomes: str  # JSON list of outcome names the file carried
    as_of: str  # the extract date: the data are complete up to this day
    imported_at: str
    imported_by: str
    correction_reason: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class Observation:
    """One outcome record of one unit; a correction is a new version, never an edit."""

    pilot_id: str
    unit: str
    outcome: str
    obs_key: str  # what identifies the record: a measurement's or event's date, a spell's start
    kind: str  # measurement, spell or event
    value: float | None
    start_date: str | None
    end_date: str | None
    on_date: str | None
    version: int = 1
    import_id: int | None = None

    def same_content(self, other: Observation) -> bool:
        return (self.value, self.start_date, self.end_date, self.on_date) == (
            other.value,
            other.start_date,
            other.end_date,
            other.on_date,
        )


class OutcomeTx:
    """A pilot's outcome records inside its write lock."""

    def __init__(self, conn: Connection, pilot_id: str):
        self.conn = conn
        self.pilot_id = pilot_id

    def latest(self) -> dict[tuple[str, str, str], Observation]:
        return latest_observations(self.conn, self.pilot_id)

    def add(self, record: ImportRecord, rows: list[Observation]) -> int:
        values = {k: v for k, v in record.__dict__.items() if k != "id"}
        import_id = self.conn.execute(imports.insert().values(**values)).inserted_primary_key[0]
        if rows:
            bulk_insert(
                self.conn, "observations", [{**r.__dict__, "import_id": import_id} for r in rows]
            )
        return int(import_id)


def bulk_insert(conn: Connection, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert many rows inside the current transaction by the fastest route each driver
    offers: sqlite3's executemany, PostgreSQL's COPY."""
    if not rows:
        return
    columns = list(rows[0])
    if conn.dialect.name == "sqlite":
        marks = ", ".join("?" for _ in columns)
        conn.exec_driver_sql(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
            [tuple(r[c] for c in columns) for r in rows],
        )
        return
    cursor = conn.connection.cursor()
    try:
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(tuple(r[c] for c in columns))
    finally:
        cursor.close()


def latest_observations(conn: Connection, pilot_id: str) -> dict[tuple[str, str, str], Observation]:
    """The newest version of every record, keyed by (unit, outcome, record key)."""
    q = (
        select(*[c for c in observations.c if c.name != "id"])
        .where(observations.c.pilot_id == pilot_id)
        .order_by(observations.c.version)
    )
    out: dict[tuple[str, str, str], Observation] = {}
    for row in conn.execute(q).mappings():
        o = Observation(**row)
        out[(o.unit, o.outcome, o.obs_key)] = o
    return out


_JSON_COLUMNS = ("probabilities", "detail", "baseline")


@dataclass(frozen=True)
class PilotRecord:
    id: str
    uid: str
    secret_commitment: str
    created_at: str
    environment: str
    log_count: int = 0
    log_head: str | None = None


@dataclass(frozen=True)
class VersionRecord:
    pilot_id: str
    number: int
    protocol_version: str
    hash: str
    canonical: str
    registered_at: str
    registered_by: str
    evalkit_version: str
    reason: str | None = None
    changes: str | None = None


class DuplicateRecord(Exception):
    """A write lost a race to an identical key (another process wrote first)."""


def normalise_url(url: str) -> str:
    """Accept the URLs people paste: postgres:// and postgresql:// mean psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised via every test
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection):
        write = conn.get_execution_options().get("evalkit_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def known_revisions() -> set[str]:
    """Every schema revision this evalkit's migrations know."""
    from alembic.script import ScriptDirectory

    return {r.revision for r in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}


def _require_known(revision: str | None, where: str) -> None:
    """A store stamped with a revision these migrations do not know was written by a
    newer evalkit: refuse it whole (Alembic would fail half-way with a traceback, and an
    older evalkit must not write to a schema it does not understand)."""
    if revision is not None and revision not in known_revisions():
        raise UserError(
            f"the store at {where} has schema revision {revision!r}, which this evalkit "
            f"does not know (it knows up to {HEAD_REVISION!r}): it was written by a newer "
            "version of evalkit",
            "upgrade evalkit on this machine to the version that wrote the store (in a "
            "clone: git pull, then python3 -m pip install -e .); nothing in it was changed",
        )


class Store:
    """Small interface over the database; callers never see SQL."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect.name

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, url: str) -> Store:
        url = normalise_url(url)
        try:
            parsed = make_url(url)
        except Exception:
            raise UserError(
                f"cannot read store URL {url!r}",
                "use sqlite:///path/evalkit.db or postgresql://user@host/db",
            ) from None
        where = parsed.render_as_string()  # the password, if any, as ***
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                folder = Path(parsed.database).parent
                if not folder.is_dir():  # a typo in the URL must not make a new, empty store
                    raise UserError(
                        f"cannot open the store {where}: the folder {folder} does not exist",
                        "check the --store URL (sqlite:///relative/path.db or "
                        "sqlite:////absolute/path.db), or create the folder first",
                    )
            engine = _sqlite_engine(url)
        elif parsed.get_backend_name() == "postgresql":
            engine = create_engine(url, pool_pre_ping=True)
        else:
            raise UserError(
                f"unsupported store {parsed.get_backend_name()!r}",
                "evalkit stores pilots in SQLite or PostgreSQL",
            )
        store = cls(engine)
        try:
            store._upgrade(where)
        except OperationalError as exc:
            engine.dispose()
            raise UserError(
                f"cannot open the store at {where}: {str(exc.orig).strip().splitlines()[0]}",
                "check the URL and that the database server is running",
            ) from None
        except UserError:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def _revision(self, conn: Connection) -> str | None:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()

    def _upgrade(self, where: str) -> None:
        with self.engine.connect() as conn:
            if self._revision(conn) == HEAD_REVISION:
                return
        with self.write() as conn:
            revision = self._revision(conn)
            if revision == HEAD_REVISION:  # another process upgraded meanwhile
                return
            _require_known(revision, where)
            from alembic import command
            from alembic.config import Config

            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    # -- transactions -----------------------------------------------------------------

    @contextmanager
    def write(self, lock: str = "evalkit") -> Iterator[Connection]:
        """A transaction holding the write lock: BEGIN IMMEDIATE on SQLite, an advisory
        transaction lock on PostgreSQL. Commits on success, rolls back on any error."""
        with self.engine.connect().execution_options(evalkit_write=True) as conn, conn.begin():
            if self.dialect == "postgresql":
                key = zlib.crc32(lock.encode()) - 2**31
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({key})")
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # -- pilots and registrations -----------------------------------------------------

    def pilot(self, pilot_id: str) -> PilotRecord | None:
        with self.read() as conn:
            row = conn.execute(select(pilots).where(pilots.c.id == pilot_id)).mappings().first()
        return PilotRecord(**row) if row else None

    def pilot_ids(self) -> list[str]:
        with self.read() as conn:
            return list(conn.execute(select(pilots.c.id).order_by(pilots.c.id)).scalars())

    def versions(self, pilot_id: str) -> list[VersionRecord]:
        q = (
            select(*[c for c in protocol_versions.c if c.name != "id"])
            .where(protocol_versions.c.pilot_id == pilot_id)
            .order_by(protocol_versions.c.number)
        )
        with self.read() as conn:
            return [VersionRecord(**r) for r in conn.execute(q).mappings()]

    @contextmanager
    def log_tx(self, pilot_id: str) -> Iterator[LogTx]:
        """The pilot's log under its write lock; all appended entries commit together."""
        with self.write(f"pilot:{pilot_id}") as conn:
            yield LogTx(conn, pilot_id)

    def log_entries(self, pilot_id: str) -> list[Entry]:
        with self.read() as conn:
            return LogTx(conn, pilot_id).entries()

    @contextmanager
    def outcome_tx(self, pilot_id: str) -> Iterator[OutcomeTx]:
        with self.write(f"pilot:{pilot_id}") as conn:
            yield OutcomeTx(conn, pilot_id)

    def observations(self, pilot_id: str, every_version: bool = False) -> list[Observation]:
        with self.read() as conn:
            if not every_version:
                return list(latest_observations(conn, pilot_id).values())
            q = (
                select(*[c for c in observations.c if c.name != "id"])
                .where(observations.c.pilot_id == pilot_id)
                .order_by(
                    observations.c.unit,
                    observations.c.outcome,
                    observations.c.obs_key,
                    observations.c.version,
                )
            )
            return [Observation(**r) for r in conn.execute(q).mappings()]

    def imports(self, pilot_id: str) -> list[ImportRecord]:
        with self.read() as conn:
            q = select(imports).where(imports.c.pilot_id == pilot_id).order_by(imports.c.id)
            return [ImportRecord(**r) for r in conn.execute(q).mappings()]

    def randomisation_dates(self, pilot_id: str) -> dict[str, tuple[str | None, str]]:
        """Each randomised person's pseudonym with the recorded randomisation (or joining)
        date and the time the entry was written, read without decoding whole entries."""
        q = select(log.c.unit, log.c.detail, log.c.created_at).where(
            log.c.pilot_id == pilot_id, log.c.kind == "allocation", log.c.level == "participant"
        )
        with self.read() as conn:
            return {u: (json.loads(d).get("on"), c) for u, d, c in conn.execute(q)}

    def excluded_units(self, pilot_id: str) -> set[str]:
        """The pseudonyms of the people assessed and excluded before randomisation (their
        exclusion entries), so that an agency file listing them can be told apart from one
        naming people the pilot never saw."""
        q = select(log.c.unit).where(
            log.c.pilot_id == pilot_id, log.c.kind == "exclusion", log.c.level == "participant"
        )
        with self.read() as conn:
            return {u for u in conn.execute(q).scalars() if u}

    def count_allocations(self, pilot_id: str, level: str = "participant") -> int:
        with self.read() as conn:
            return LogTx(conn, pilot_id).count(level=level)

    def log_head(self, pilot_id: str) -> tuple[int, str | None]:
        with self.read() as conn:
            return LogTx(conn, pilot_id).head()

    def create_pilot(self, pilot: PilotRecord, first: VersionRecord) -> None:
        """Insert a pilot and its first registered version together, or neither."""
        try:
            with self.write(f"pilot:{pilot.id}") as conn:
                exists = conn.execute(select(pilots.c.id).where(pilots.c.id == pilot.id)).first()
                if exists:
                    raise DuplicateRecord(pilot.id)
                conn.execute(pilots.insert().values(**_as_row(pilot)))
                conn.execute(protocol_versions.insert().values(**_as_row(first)))
        except IntegrityError:
            raise DuplicateRecord(pilot.id) from None

    def add_version(self, version: VersionRecord, expected_number: int) -> None:
        """Append an amendment; fails with DuplicateRecord if the pilot moved on meanwhile."""
        try:
            with self.write(f"pilot:{version.pilot_id}") as conn:
                latest = conn.execute(
                    select(func.max(protocol_versions.c.number)).where(
                        protocol_versions.c.pilot_id == version.pilot_id
                    )
                ).scalar()
                if latest != expected_number - 1:
                    raise DuplicateRecord(version.pilot_id)
                conn.execute(protocol_versions.insert().values(**_as_row(version)))
        except IntegrityError:
            raise DuplicateRecord(version.pilot_id) from None


def _entry_rows(entries: list[Entry]) -> list[dict[str, Any]]:
    """Rows to insert; the probabilities (the same for most entries) are encoded once."""
    encoded: dict[tuple, str] = {}
    rows = []
    for e in entries:
        row = dict(e.__dict__)
        for c in ("detail", "baseline"):
            row[c] = canonical_json(row[c])
        if e.probabilities is not None:
            key = tuple(e.probabilities.items())
            if key not in encoded:
                encoded[key] = canonical_json(e.probabilities)
            row["probabilities"] = encoded[key]
        row["unit_key"] = e.unit_key
        rows.append(row)
    return rows


def _entry(row: Any) -> Entry:
    d = {k: row[k] for k in Entry.__dataclass_fields__}
    for c in _JSON_COLUMNS:
        d[c] = None if d[c] is None else json.loads(d[c])
    return Entry(**d)


_LOG_ORDER = (log.c.seq, log.c.id)


class LogTx:
    """One pilot's log inside the write lock: what an allocation decision may read, and
    the one way to append. Everything read here is consistent with what is appended."""

    def __init__(self, conn: Connection, pilot_id: str):
        self.conn = conn
        self.pilot_id = pilot_id

    def head(self) -> tuple[int, str | None]:
        row = self.conn.execute(
            select(pilots.c.log_count, pilots.c.log_head).where(pilots.c.id == self.pilot_id)
        ).one()
        return row[0], row[1]

    def unit(self, level: str, unit: str) -> Entry | None:
        row = (
            self.conn.execute(
                select(log).where(
                    log.c.pilot_id == self.pilot_id, log.c.unit_key == f"{level}:{unit}"
                )
            )
            .mappings()
            .first()
        )
        return _entry(row) if row else None

    def units(self, level: str, units: Sequence[str]) -> dict[str, Entry]:
        """The allocations and exclusions of many units, fetched in a few queries."""
        keys = [f"{level}:{u}" for u in units]
        found: dict[str, Entry] = {}
        for i in range(0, len(keys), 500):
            q = select(log).where(
                log.c.pilot_id == self.pilot_id, log.c.unit_key.in_(keys[i : i + 500])
            )
            for row in self.conn.execute(q).mappings():
                e = _entry(row)
                found[e.unit or ""] = e
        return found

    def count(self, stratum: str | None = None, level: str = "participant") -> int:
        q = select(func.count()).where(
            log.c.pilot_id == self.pilot_id, log.c.kind == "allocation", log.c.level == level
        )
        if stratum is not None:
            q = q.where(log.c.stratum == stratum)
        return self.conn.execute(q).scalar_one()

    def entries(self, kind: str | None = None, level: str | None = None) -> list[Entry]:
        q = select(log).where(log.c.pilot_id == self.pilot_id)
        if kind is not None:
            q = q.where(log.c.kind == kind)
        if level is not None:
            q = q.where(log.c.level == level)
        return [_entry(r) for r in self.conn.execute(q.order_by(*_LOG_ORDER)).mappings()]

    def append(self, entries: list[Entry]) -> tuple[int, str | None]:
        """Insert sealed entries that follow the current head, and move the head."""
        if not entries:
            return self.head()
        count, head = self.head()
        if entries[0].seq != count + 1 or (head is not None and entries[0].prev_hash != head):
            raise RuntimeError("entries do not follow the log head")  # a bug, not user error
        bulk_insert(self.conn, "log", _entry_rows(entries))
        new_head = (entries[-1].seq, entries[-1].entry_hash)
        self.conn.execute(
            pilots.update()
            .where(pilots.c.id == self.pilot_id)
            .values(log_count=new_head[0], log_head=new_head[1])
        )
        return new_head


def _as_row(record: Any) -> dict[str, Any]:
    return dict(record.__dict__)


def default_url(workspace: Path) -> str:
    env = os.environ.get("EVALKIT_DATABASE_URL")
    if env:
        return env
    return f"sqlite:///{(workspace / 'evalkit.db').resolve()}"


__all__ = [
    "DuplicateRecord",
    "PilotRecord",
    "SQLAlchemyError",
    "Store",
    "VersionRecord",
    "default_url",
    "metadata",
]
