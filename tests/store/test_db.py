"""Transactions: a read never takes SQLite's write lock (nor waits for it), and refuses to write."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select, update

from tunery.store.db import Database, ReadOnlyTransaction
from tunery.store.models import User


@pytest.fixture()
def db(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'tunery.db'}")
    db.migrate()
    with db.session() as s:
        s.add(User(id="u1", name="one"))
    return db


def other_connection(db: Database) -> sqlite3.Connection:
    return sqlite3.connect(db.url.removeprefix("sqlite:///"), timeout=0.2, isolation_level=None)


def test_a_read_leaves_the_write_lock_free_and_a_write_holds_it(db: Database) -> None:
    with db.read() as s:
        assert s.scalar(select(User.name)) == "one"
        writer = other_connection(db)
        writer.execute("BEGIN IMMEDIATE")  # would raise "database is locked" were the read holding it
        writer.execute("UPDATE users SET name = 'two'")
        writer.execute("COMMIT")
        assert s.scalar(select(User.name)) == "one"  # a consistent snapshot meanwhile
    with db.session() as s:
        s.scalar(select(User.name))
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other_connection(db).execute("BEGIN IMMEDIATE")


def test_a_read_refuses_to_write(db: Database) -> None:
    with pytest.raises(ReadOnlyTransaction), db.read() as s:
        s.add(User(id="u2", name="two"))
    with pytest.raises(ReadOnlyTransaction), db.read() as s:
        s.execute(update(User).values(name="x"))
    with db.read() as s:
        assert s.scalars(select(User.name)).all() == ["one"]
