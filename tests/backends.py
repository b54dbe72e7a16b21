"""The backends the tests run against: SQLite and PostgreSQL for the store, a local directory and
an S3 server (moto, on 127.0.0.1) for blobs.

PostgreSQL comes from ``TUNERY_TEST_POSTGRES_URL`` (an admin URL; `.ci/run` starts a server and
sets it, locally run ``eval "$(.ci/postgres)"``). Without it the PostgreSQL variants skip, saying
so. Each test module gets a fresh database, dropped at the end; each test starts from empty tables.

``TUNERY_TEST_DATABASE=postgresql`` makes every live server (``tests.conftest.start_server``) use
a fresh PostgreSQL database too, so the API and end-to-end suites can be run on either backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import create_engine, text

from tunery.store.db import Database, normalize_url
from tunery.store.models import Base

POSTGRES_ENV = "TUNERY_TEST_POSTGRES_URL"
NO_POSTGRES = (f"PostgreSQL tests need {POSTGRES_ENV} (an admin URL); run `eval \"$(.ci/postgres)\"` "
               "to start a local server, as .ci/run does")


def postgres_admin_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV, "")
    return normalize_url(url) if url else None


def require_postgres() -> str:
    url = postgres_admin_url()
    if url is None:
        pytest.skip(NO_POSTGRES)
    return url


def _admin(sql: str) -> None:
    url = require_postgres()
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def create_postgres_database(label: str = "t") -> str:
    """A new, empty database on the test server; returns its URL."""
    admin = require_postgres()
    name = f"tunery_{''.join(c for c in label.lower() if c.isalnum())[:30]}_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE DATABASE "{name}"')
    base, _, _ = admin.rpartition("/")
    return f"{base}/{name}"


def drop_postgres_database(url: str) -> None:
    _admin(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')


def empty_tables(db: Database) -> None:
    """Delete every row (children first), keeping the schema and the migration stamp."""
    with db.session() as s:
        if db.dialect == "postgresql":
            names = ", ".join(t.name for t in Base.metadata.sorted_tables)
            s.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                s.execute(table.delete())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database URL per test module, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'tunery.db'}"
        return
    url = create_postgres_database(request.module.__name__.rpartition(".")[2])
    yield url
    drop_postgres_database(url)


@pytest.fixture(scope="module")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for this module (skips without a server)."""
    url = create_postgres_database(request.module.__name__.rpartition(".")[2])
    yield url
    drop_postgres_database(url)


@pytest.fixture()
def database(backend_url: str) -> Iterator[Database]:
    """The module's database, migrated and emptied for this test."""
    db = Database(backend_url)
    db.migrate()
    empty_tables(db)
    yield db
    db.dispose()


# ---- live servers -------------------------------------------------------------------------------

_server_databases: list[str] = []


def server_database_env() -> dict[str, str]:
    """``TUNERY_DATABASE_URL`` for a new live server: a fresh PostgreSQL database when
    ``TUNERY_TEST_DATABASE=postgresql``, else nothing (the server's own SQLite)."""
    choice = os.environ.get("TUNERY_TEST_DATABASE", "sqlite")
    if choice == "sqlite":
        return {}
    if choice != "postgresql":
        raise ValueError(f"TUNERY_TEST_DATABASE must be sqlite or postgresql; got {choice!r}")
    url = create_postgres_database("server")
    _server_databases.append(url)
    return {"TUNERY_DATABASE_URL": url}


@pytest.fixture(scope="session", autouse=True)
def _drop_server_databases() -> Iterator[None]:
    yield
    for url in _server_databases:
        drop_postgres_database(url)


# ---- S3 -----------------------------------------------------------------------------------------

@dataclass
class S3Server:
    """A moto S3 server on 127.0.0.1 (any access key works; buckets are created on demand)."""

    endpoint: str
    access_key: str = "testing"
    secret_key: str = "testing"

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def new_bucket(self, label: str = "t") -> str:
        name = f"{label.lower()[:20]}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, prefix: str = "tunery") -> dict[str, str]:
        """The settings that point tunery at ``s3://bucket/prefix`` on this server."""
        return {"TUNERY_BLOB_URL": f"s3://{bucket}/{prefix}", "TUNERY_S3_ENDPOINT_URL": self.endpoint,
                "TUNERY_S3_ACCESS_KEY_ID": self.access_key, "TUNERY_S3_SECRET_ACCESS_KEY": self.secret_key,
                "TUNERY_S3_ADDRESSING_STYLE": "path"}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    """moto's standalone S3 server, in a thread of the test process, on a free loopback port."""
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield S3Server(endpoint=f"http://127.0.0.1:{port}")
    server.stop()
