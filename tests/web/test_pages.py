"""The dashboard's pages in-process (no browser): sign-in, isolation between users, CSRF, what each
page shows. The browser test (test_dashboard_browser.py) covers the same flows live in Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.job_rows import job_spec
from tunery.app import create_app
from tunery.queue.states import transition
from tunery.settings import Settings
from tunery.store import jobs as job_store
from tunery.store.models import File, Job, utcnow
from tunery.store.status import JobStatus
from tunery.store.users import create_key, get_or_create_user, revoke_key


class World:
    def __init__(self, tmp: Path):
        self.app = create_app(Settings(data_dir=tmp / "data", secret_key="test-secret"))
        self.ctx = self.app.state.ctx
        with self.ctx.db.session() as s:
            self.alice_key = create_key(s, "alice")
            self.bob_key = create_key(s, "bob")
            self.alice = get_or_create_user(s, "alice").id
            self.bob = get_or_create_user(s, "bob").id

    def job(self, user_id: str, name: str, minutes_ago: int = 0, **columns: object) -> str:
        job_id = job_store.new_job_id()
        with self.ctx.db.session() as s:
            job_store.create_job(s, Job(id=job_id, user_id=user_id, model_output_name=name,
                                        spec=job_spec(model="tunery/tiny-llama", training_file="file-x", n_epochs=2),
                                        created_at=utcnow() - timedelta(minutes=minutes_ago), **columns))
            transition(s, job_id, JobStatus.QUEUED, event_type="job_pending", message="queued")
        return job_id

    def client(self, key: str | None = None) -> TestClient:
        c = TestClient(self.app, base_url="http://testserver", follow_redirects=False)
        if key is not None:
            sign_in(c, key)
        return c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no csrf field on the page"
    return m.group(1)


def sign_in(c: TestClient, key: str, next: str = "/") -> None:
    form = c.get("/login")
    r = c.post("/login", data={"api_key": key, "csrf": csrf_of(form.text), "next": next})
    assert r.status_code == 303, r.text


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    yield World(tmp_path)


def test_pages_need_sign_in_and_remember_where_you_were_going(world: World) -> None:
    c = world.client()
    for path in ("/", "/files", "/jobs/ft-x"):
        r = c.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert c.get("/partials/jobs").status_code == 401
    form = c.get("/login")
    assert form.status_code == 200 and 'type="password"' in form.text
    r = c.post("/login", data={"api_key": world.alice_key, "csrf": csrf_of(form.text), "next": "/files"})
    assert r.status_code == 303 and r.headers["location"] == "/files"
    cookie = r.headers["set-cookie"]
    assert "tunery_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert world.alice_key not in cookie
    assert c.get("/files").status_code == 200


def test_bad_keys_forged_login_forms_and_open_redirects(world: World) -> None:
    c = world.client()
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"api_key": "tk-wrong", "csrf": token})
    assert r.status_code == 401 and "not valid" in r.text and "tunery_session" not in r.headers.get("set-cookie", "")
    # No login-CSRF cookie (a cross-site form): refused even with the right key.
    fresh = world.client()
    r = fresh.post("/login", data={"api_key": world.alice_key, "csrf": "made-up"})
    assert r.status_code == 403 and "tunery_session" not in r.headers.get("set-cookie", "")
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        c = world.client()
        token = csrf_of(c.get("/login").text)
        r = c.post("/login", data={"api_key": world.alice_key, "csrf": token, "next": target})
        assert r.headers["location"] == "/"


def test_jobs_list_is_mine_only_newest_first_filtered_and_paginated(world: World) -> None:
    mine = [world.job(world.alice, f"alice/model-{i}", minutes_ago=100 - i) for i in range(23)]
    theirs = world.job(world.bob, "bob/secret-model")
    with world.ctx.db.session() as s:
        transition(s, mine[0], JobStatus.CANCELLED, event_type="job_stopped", message="x")
    c = world.client(world.alice_key)
    page1 = c.get("/").text
    assert "bob/secret-model" not in page1 and theirs not in page1
    ids = re.findall(r'data-job="(ft-[^"]+)"', page1)
    assert ids == list(reversed(mine))[:20]
    assert "Page 1 of 2" in page1 and "23 jobs" in page1
    page2 = c.get("/?page=2").text
    assert re.findall(r'data-job="(ft-[^"]+)"', page2) == list(reversed(mine))[20:]
    cancelled = c.get("/?status=cancelled").text
    assert re.findall(r'data-job="(ft-[^"]+)"', cancelled) == [mine[0]]
    assert 'class="badge s-cancelled"' in cancelled
    # An unknown status filter shows everything rather than failing.
    assert "23 jobs" in c.get("/?status=bogus").text


def test_job_page_shows_params_progress_chart_checkpoints_and_events(world: World) -> None:
    job_id = world.job(world.alice, "alice/tiny-run")
    blob = world.ctx.settings.data_dir / "merged.bin"
    weights = b"weights" * 100
    blob.write_bytes(weights)
    with world.ctx.db.session() as s:
        transition(s, job_id, JobStatus.RUNNING, event_type="job_start", message="Job started on worker w1",
                   worker_id="w1", started_at=utcnow())
        job = job_store.get_job(s, job_id)
        job.batch_size = 8
        job_store.update_progress(s, job_id, total_steps=10, steps_completed=4, seconds_remaining=75.0)
        for step in range(1, 5):
            job_store.add_metrics(s, job_id, step, {"train/loss": 3.0 - step * 0.5, "train/learning_rate": 1e-3})
        job_store.add_metrics(s, job_id, 4, {"eval/loss": 1.4})
        world.ctx.blobs.put(f"jobs/{job_id}/step-4/model", blob)
        job_store.add_checkpoint(s, job_id, 4, "model", f"jobs/{job_id}/step-4/model", len(weights), final=False)
        job_store.add_event(s, job_id, "checkpoint_save", "Checkpoint <saved> at step 4")
    c = world.client(world.alice_key)
    html = c.get(f"/jobs/{job_id}").text
    assert 'class="badge s-running"' in html
    assert "4 / 10</strong> steps" in html and "ETA <strong" in html and "1 min 15 s" in html
    changed = r'<tr class="changed"><th scope="row" class="mono">batch_<wbr>size</th><td>max</td><td>8</td>'
    assert re.search(changed, html)
    assert html.count("<polyline") == 2 and "<circle" in html  # train loss + lr lines, eval dot
    assert "Checkpoint &lt;saved&gt; at step 4" in html  # escaped
    link = re.search(r'href="(/jobs/[^"]+/download\?checkpoint=merged&amp;step=4)"', html)
    assert link, html
    r = c.get(link.group(1).replace("&amp;", "&"))
    assert r.status_code == 200 and r.content == weights
    assert "alice--tiny-run-step-4.tar.zst" in r.headers["content-disposition"]
    assert c.get(f"/jobs/{job_id}/download?checkpoint=merged").status_code == 404  # no final model yet
    live = c.get(f"/partials/jobs/{job_id}")
    assert live.headers["x-live-done"] == "0" and 'data-status="running"' in live.text
    assert "<html" not in live.text
    csp = c.get(f"/jobs/{job_id}").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp


def test_another_users_job_is_404_everywhere(world: World) -> None:
    job_id = world.job(world.alice, "alice/private")
    bob = world.client(world.bob_key)
    assert bob.get(f"/jobs/{job_id}").status_code == 404
    assert bob.get(f"/partials/jobs/{job_id}").status_code == 404
    assert bob.get(f"/jobs/{job_id}/download?checkpoint=merged").status_code == 404
    token = csrf_of(bob.get("/").text)
    assert bob.post(f"/jobs/{job_id}/cancel", data={"csrf": token}).status_code == 404
    assert bob.post(f"/jobs/{job_id}/delete", data={"csrf": token}).status_code == 404
    assert "alice/private" not in bob.get("/").text
    with world.ctx.db.session() as s:
        assert job_store.get_job(s, job_id).status == "queued"


def test_cancel_and_delete_need_this_sessions_csrf_token(world: World) -> None:
    job_id = world.job(world.alice, "alice/to-cancel")
    alice = world.client(world.alice_key)
    bob = world.client(world.bob_key)
    url = f"/jobs/{job_id}/cancel"
    assert alice.post(url).status_code == 403
    assert alice.post(url, data={"csrf": "nope"}).status_code == 403
    assert alice.post(url, data={"csrf": csrf_of(bob.get("/").text)}).status_code == 403  # bob's token
    assert world.client().post(url, data={"csrf": csrf_of(alice.get("/").text)}).status_code == 403  # no cookie
    token = csrf_of(alice.get(f"/jobs/{job_id}").text)
    r = alice.post(url, data={"csrf": token}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    with world.ctx.db.session() as s:
        assert job_store.get_job(s, job_id).status == "queued"
    r = alice.post(url, data={"csrf": token})
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{job_id}"
    with world.ctx.db.session() as s:
        assert job_store.get_job(s, job_id).status == "cancelled"
    page = alice.get(f"/jobs/{job_id}").text
    assert 'data-status="cancelled"' in page and "Job cancelled by alice" in page
    # Cancelling again is harmless; deleting needs the token too.
    assert alice.post(url, data={"csrf": token}).status_code == 303
    assert alice.post(f"/jobs/{job_id}/delete").status_code == 403
    assert alice.post(f"/jobs/{job_id}/delete", data={"csrf": token}).headers["location"] == "/"
    assert alice.get(f"/jobs/{job_id}").status_code == 404


def test_unfinished_jobs_cannot_be_deleted_from_the_page(world: World) -> None:
    job_id = world.job(world.alice, "alice/busy")
    alice = world.client(world.alice_key)
    token = csrf_of(alice.get("/").text)
    assert alice.post(f"/jobs/{job_id}/delete", data={"csrf": token}).status_code == 400


def test_files_page_shows_format_size_samples_and_line_errors(world: World) -> None:
    with world.ctx.db.session() as s:
        s.add(File(id="file-good", user_id=world.alice, filename="train.jsonl", purpose="fine-tune",
                   file_type="jsonl", bytes=2048, upload_state="uploaded", processing_status="COMPLETED",
                   dataset_format="conversation", num_samples=48,
                   report={"valid": True, "dataset_format": "CONVERSATION", "nlines": 48}))
        s.add(File(id="file-bad", user_id=world.alice, filename="broken.jsonl", purpose="fine-tune",
                   file_type="jsonl", bytes=99, upload_state="uploaded", processing_status="INVALID_FORMAT",
                   report={"valid": False, "error": "line 3: the line is not valid JSON", "line_number": 3}))
        s.add(File(id="file-bob", user_id=world.bob, filename="bobs.jsonl", purpose="fine-tune",
                   file_type="jsonl", bytes=1, upload_state="uploaded"))
    html = world.client(world.alice_key).get("/files").text
    assert "train.jsonl" in html and "conversation" in html and "2.0 KiB" in html and ">48<" in html
    assert "INVALID_FORMAT" in html and "line 3: the line is not valid JSON" in html
    assert "bobs.jsonl" not in html and "file-bob" not in html


def test_revoking_the_key_or_signing_out_ends_the_session(world: World) -> None:
    c = world.client(world.alice_key)
    assert c.get("/").status_code == 200
    r = c.post("/logout", data={"csrf": csrf_of(c.get("/").text)})
    assert r.status_code == 303 and 'tunery_session=""' in r.headers["set-cookie"]
    c.cookies.clear()
    assert c.get("/").status_code == 303
    c = world.client(world.alice_key)
    with world.ctx.db.session() as s:
        revoke_key(s, world.alice_key)
    assert c.get("/").status_code == 303


def test_static_files_are_served_and_nothing_else(world: World) -> None:
    c = world.client()
    css = c.get("/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "@media" in css.text and "http" not in css.text  # no external fonts or imports
    assert c.get("/static/live.js").status_code == 200
    assert c.get("/static/..%2Fviews.py").status_code == 404
    assert c.get("/static/views.py").status_code == 404
