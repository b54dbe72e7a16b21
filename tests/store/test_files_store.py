"""store/files.py on real SQLite and PostgreSQL: compare-and-set upload states, duplicates, ownership, deletes."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from tests.job_rows import job_row, job_spec
from tunery.errors import Conflict, NotFound
from tunery.store import files as store
from tunery.store.db import Database
from tunery.store.models import Job, utcnow
from tunery.store.users import get_or_create_user


@pytest.fixture()
def db(database: Database) -> Database:
    """A fresh store, once on SQLite and once on PostgreSQL (tests/backends.py)."""
    return database


def make_user(db: Database, name: str) -> str:
    with db.session() as s:
        return get_or_create_user(s, name).id


def make_file(db: Database, user_id: str, name: str = "t.jsonl", checksum: str = "ab" * 32) -> str:
    with db.session() as s:
        return store.create_file(
            s, user_id=user_id, filename=name, purpose="fine-tune", file_type="jsonl", checksum=checksum,
        ).id


def upload(db: Database, file_id: str, status: str = store.COMPLETED) -> None:
    with db.session() as s:
        assert store.claim_upload(s, file_id)
        assert store.finish_upload(s, file_id, size=10, key=store.blob_key(file_id), checksum="ab" * 32)
        store.record_validation(s, file_id, valid=status == store.COMPLETED, report={"valid": True},
                                dataset_format="general", num_samples=1)


def test_only_one_of_many_concurrent_claims_wins(db: Database) -> None:
    file_id = make_file(db, make_user(db, "alice"))
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        with db.session() as s:
            wins.append(store.claim_upload(s, file_id))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_a_released_claim_can_be_taken_again_but_a_finished_upload_cannot(db: Database) -> None:
    file_id = make_file(db, make_user(db, "alice"))
    with db.session() as s:
        assert store.claim_upload(s, file_id)
        store.release_upload(s, file_id)
        assert store.claim_upload(s, file_id)
        assert store.finish_upload(s, file_id, size=3, key="k", checksum="c")
        assert not store.claim_upload(s, file_id)
        assert not store.finish_upload(s, file_id, size=4, key="k2", checksum="d")
        row = store.get_file(s, store.get_file_any_owner(s, file_id).user_id, file_id)  # type: ignore[union-attr]
        assert (row.upload_state, row.bytes, row.blob_key) == (store.UPLOADED, 3, "k")


def test_duplicates_are_completed_valid_files_of_the_same_user_name_checksum_and_purpose(db: Database) -> None:
    alice, bob = make_user(db, "alice"), make_user(db, "bob")
    pending = make_file(db, alice)
    invalid = make_file(db, alice)
    upload(db, invalid, status=store.INVALID_FORMAT)
    with db.session() as s:
        key = {"checksum": "ab" * 32, "filename": "t.jsonl", "purpose": "fine-tune"}
        assert store.find_duplicate(s, user_id=alice, **key) is None
    valid = make_file(db, alice)
    upload(db, valid)
    with db.session() as s:
        dup = store.find_duplicate(s, user_id=alice, checksum="ab" * 32, filename="t.jsonl", purpose="fine-tune")
        assert dup is not None and dup.id == valid and dup.id != pending
        for user, name, checksum, purpose in ((bob, "t.jsonl", "ab" * 32, "fine-tune"),
                                              (alice, "u.jsonl", "ab" * 32, "fine-tune"),
                                              (alice, "t.jsonl", "cd" * 32, "fine-tune"),
                                              (alice, "t.jsonl", "ab" * 32, "eval"),
                                              (alice, "t.jsonl", "", "fine-tune")):
            assert store.find_duplicate(s, user_id=user, checksum=checksum, filename=name, purpose=purpose) is None


def test_lists_are_per_user_and_newest_first(db: Database) -> None:
    alice, bob = make_user(db, "alice"), make_user(db, "bob")
    ids = [make_file(db, alice, name=f"{i}.jsonl") for i in range(3)]
    with db.session() as s:  # spread the creation times so the order is unambiguous
        for i, file_id in enumerate(ids):
            store.get_file(s, alice, file_id).created_at = utcnow() + timedelta(seconds=i)
    bobs = make_file(db, bob)
    with db.session() as s:
        assert [f.id for f in store.list_files(s, alice)] == ids[::-1]
        assert [f.id for f in store.list_files(s, bob)] == [bobs]
        with pytest.raises(NotFound):
            store.get_file(s, bob, ids[0])
        with pytest.raises(NotFound):
            store.delete_file(s, bob, ids[0])


@pytest.mark.parametrize("status", ["pending", "queued", "running", "cancel_requested", "uploading"])
def test_delete_is_refused_while_an_unfinished_job_uses_the_file(db: Database, status: str) -> None:
    alice = make_user(db, "alice")
    file_id = make_file(db, alice)
    with db.session() as s:
        s.add(job_row("ft-1", alice, status, job_spec(training_file=file_id)))
    with db.session() as s, pytest.raises(Conflict, match="ft-1"):
        store.delete_file(s, alice, file_id)
    with db.session() as s:
        s.get(Job, "ft-1").status = "cancelled"  # type: ignore[union-attr]
    with db.session() as s:
        assert store.delete_file(s, alice, file_id).id == file_id
    with db.session() as s, pytest.raises(NotFound):
        store.get_file(s, alice, file_id)


def test_multipart_state_is_compare_and_set(db: Database) -> None:
    file_id = make_file(db, make_user(db, "alice"))
    with db.session() as s:
        mp = store.create_multipart(s, file_id, 3)
        assert store.set_multipart_state(s, mp.id, (store.MP_OPEN,), store.MP_COMPLETING)
        assert not store.set_multipart_state(s, mp.id, (store.MP_OPEN,), store.MP_ABORTED)
        assert store.multipart_ids(s, file_id) == [mp.id]
