"""Engine, sessions and migrations.

SQLite (WAL) is the embedded default; PostgreSQL (psycopg 3) is the same code with a different
URL, e.g. ``TUNERY_DATABASE_URL=postgresql://tunery:secret@db.internal/tunery``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


# Any constant: the advisory lock that serialises concurrent `migrate()` calls on PostgreSQL
# (an API node and N workers starting together would otherwise race to create the tables).
MIGRATION_LOCK_ID = 0x7475_6E65  # "tune"


def normalize_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` mean psycopg 3 (SQLAlchemy's default driver is
    psycopg2, which we do not ship)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def load_json(text: str) -> Any:
    """The JSON columns' decoder: orjson (a retrieve decodes dozens of event fields), and json for
    the NaN and Infinity that json.dumps can write (metrics from before they were stored as null),
    which orjson refuses."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               json_deserializer=load_json)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # READ COMMITTED (PostgreSQL's default) is what compare-and-set and SKIP LOCKED claiming
    # assume: a blocked UPDATE re-checks its WHERE clause against the row it waited for.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_recycle=1800,
                         json_deserializer=load_json)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, decide when transactions begin (see _sqlite_begin_immediate).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # A write transaction takes the write lock at BEGIN, so two writers never deadlock upgrading
    # read locks; this is what makes compare-and-set and claiming safe across processes on SQLite.
    # A read transaction takes no lock at all: in WAL mode it reads a snapshot while one writer
    # commits beside it, so no reader ever waits for a writer or makes one wait.
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


READ_ONLY = "tunery_read_only"


class ReadOnlyTransaction(RuntimeError):
    """Code in a ``Database.read()`` block tried to write: use ``Database.session()`` for that."""


class ReadSession(Session):
    """A session that raises ``ReadOnlyTransaction`` on any write, so a read transaction never
    tries to upgrade to the write lock halfway (on SQLite that fails under contention)."""


@event.listens_for(ReadSession, "before_flush")
def _no_flush(s: Session, *_: Any) -> None:
    if s.new or s.dirty or s.deleted:
        raise ReadOnlyTransaction("a read-only transaction tried to write rows")


@event.listens_for(ReadSession, "do_orm_execute")
def _no_write_statements(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        raise ReadOnlyTransaction(f"a read-only transaction tried to run {state.statement}")


class Database:
    """An engine plus two session factories: ``session()`` is one write transaction, ``read()``
    one read-only transaction. Keep both short: never tokenize, validate, call the network or
    move blobs inside one (on SQLite a write transaction holds the database's one write lock)."""

    def __init__(self, url: str):
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine = self.engine.execution_options(**{READ_ONLY: True})
        self._readers = sessionmaker(self._read_engine, class_=ReadSession, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on any exception."""
        with self._sessions() as s, s.begin():
            yield s

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read-only transaction (a consistent snapshot); it never takes SQLite's write lock,
        and any attempt to write in it raises ``ReadOnlyTransaction``."""
        with self._readers() as s, s.begin():
            yield s

    @contextmanager
    def read_rows(self) -> Iterator[Connection]:
        """``read()`` on a plain connection, without the ORM: for the reads every client polls, where
        the ORM's cost per statement would be most of the request. Run only SELECTs in it."""
        with self._read_engine.connect() as conn, conn.begin():
            yield conn

    @property
    def reads_in_process(self) -> bool:
        """SQLite: a read is a WAL snapshot in this process, never waiting for a lock or a network
        round trip (a few rows take well under a millisecond)."""
        return self.dialect == "sqlite"

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Apply every Alembic migration (idempotent, and safe to call from many processes at
        once: SQLite's BEGIN IMMEDIATE or a PostgreSQL advisory lock lets one migrate at a time)."""
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            cfg = alembic_config(self.url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg
