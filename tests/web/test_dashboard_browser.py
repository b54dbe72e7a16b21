"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against a live `tunery
serve` with an embedded worker training `tunery/tiny-llama`: sign in, follow a job live until it
completes and its loss chart appears, download a checkpoint, compare the fine-tuned model's streamed
answer with the base model's in the playground, cancel a second job from its page,
and check that another user gets a 404 and that a forged cancel is refused.

Screenshots (list, job page, phone-width job page, files) are saved in the test's temp dir.
Needs /usr/bin/chromium (`.ci/run` installs it); skipped when it is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, start_server
from tests.sample_data import conversation_file
from tunery.store.db import Database
from tunery.store.users import create_key

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL = "tunery/tiny-llama"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("dashboard"), TUNERY_WORKERS="1", TUNERY_HEARTBEAT_INTERVAL_S="0.5")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright  # a dev dependency: missing means a broken install

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def new_key(server: LiveServer, user: str) -> str:
    """Like ``tunery keys create`` but in-process (the CLI's start-up costs seconds on a busy box)."""
    db = Database(server.database_url)
    try:
        with db.session() as s:
            return create_key(s, user)
    finally:
        db.engine.dispose()


def sign_in(page, base: str, key: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(base + "/")
    assert "/login" in page.url
    page.fill("#api_key", key)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url(base + "/")


def test_follow_download_cancel_and_isolation(server: LiveServer, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect
    from together import Together

    base, key = server.base_url, server.api_key
    client = Together(base_url=base, api_key=key, max_retries=0)
    train = client.files.upload(conversation_file(tmp_path / "train.jsonl", n=20), purpose="fine-tune")
    val = client.files.upload(conversation_file(tmp_path / "val.jsonl", n=8, seed=1), purpose="fine-tune")
    bad = tmp_path / "broken.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": "fine too"}) + "\n{not json\n")
    r = httpx.post(f"{base}/v1/files/upload", headers={"Authorization": f"Bearer {key}"},
                   files={"file": ("broken.jsonl", bad.read_bytes())}, data={"purpose": "fine-tune"})
    assert r.status_code == 400
    watched = client.fine_tuning.create(
        training_file=train.id, validation_file=val.id, n_evals=2, model=MODEL, lora=True, n_epochs=2,
        n_checkpoints=2, learning_rate=3e-3, batch_size="max", suffix="watched", max_seq_length=256)
    # Doomed must still be training when it is cancelled, after the watched job and the playground:
    # thousands of steps, so a fast machine cannot finish it first.
    long = client.files.upload(conversation_file(tmp_path / "long.jsonl", n=2000, seed=2), purpose="fine-tune")
    doomed = client.fine_tuning.create(training_file=long.id, model=MODEL, lora=True, n_epochs=20,
                                       learning_rate=1e-3, batch_size=1, suffix="doomed", max_seq_length=256)

    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    sign_in(page, base, key)

    # The list: both jobs, newest first, status badges; it refreshes itself while jobs run.
    rows = page.locator("tr[data-job]")
    expect(rows).to_have_count(2)
    assert rows.nth(0).get_attribute("data-job") == doomed.id
    expect(page.locator(f"tr[data-job='{watched.id}'] .badge")).to_have_text("running", timeout=60_000)
    # Best effort, for the screenshot: catch it mid-run with an ETA (a fast machine may finish first).
    row = page.locator(f"tr[data-job='{watched.id}']")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not re.search(r"ETA|completed", row.inner_text()):
        page.wait_for_timeout(250)
    page.screenshot(path=str(tmp_path / "list.png"), full_page=True)

    # The job page follows the job live, without reloading, to completed; the chart appears.
    page.click(f"a[href='/jobs/{watched.id}']")
    page.evaluate("window.__not_reloaded = true")
    expect(page.locator("#job-status")).to_have_text("completed", timeout=150_000)
    assert page.evaluate("window.__not_reloaded === true")
    expect(page.locator("#loss-chart svg polyline").first).to_be_visible()
    assert page.locator("#loss-chart svg circle").count() >= 1  # eval loss points
    expect(page.locator("#events")).to_contain_text("job_complete")
    expect(page.locator("table.params tr.changed")).to_contain_text("max")
    expect(page.locator("form[action$='/cancel']")).to_be_hidden()
    page.screenshot(path=str(tmp_path / "job.png"), full_page=True)

    # Download the final merged model from its link.
    with page.expect_download() as info:
        page.locator("a.download", has_text="merged").last.click()
    download = info.value
    assert download.suggested_filename.endswith(".tar.zst")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd frame magic
    api = httpx.get(f"{base}/v1/finetune/download", params={"ft_id": watched.id, "checkpoint": "merged"},
                    headers={"Authorization": f"Bearer {key}"})
    assert api.content == saved.read_bytes()

    # The playground: the fine-tuned model's answer streams in beside the base model's, for one prompt,
    # and each is what the API answers (greedy) for the same messages.
    page.reload()
    page.fill("#pg-prompt", "What color is the sky0?")
    page.click("#playground-form button[type=submit]")
    expect(page.locator("#playground-form")).to_have_attribute("data-done", "1", timeout=180_000)
    shown = {side: page.locator(f"#answer-{side}").text_content() for side in ("tuned", "base")}
    for side, name in (("tuned", watched.model_output_name), ("base", MODEL)):
        r = httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                       json={"model": name, "messages": [{"role": "user", "content": "What color is the sky0?"}],
                             "temperature": 0, "max_tokens": 128})
        assert shown[side] == r.json()["choices"][0]["message"]["content"]
    assert shown["tuned"] and shown["tuned"] != shown["base"]
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)

    # A forged cancel (the session cookie, but no CSRF token) is refused.
    session = next(c["value"] for c in ctx.cookies() if c["name"] == "tunery_session")
    assert httpx.post(f"{base}/jobs/{doomed.id}/cancel", cookies={"tunery_session": session}).status_code == 403
    assert httpx.post(f"{base}/jobs/{doomed.id}/cancel").status_code == 403
    assert client.fine_tuning.retrieve(doomed.id).status not in ("cancel_requested", "cancelled")

    # Cancel the second job from its page and watch it end cancelled.
    page.goto(f"{base}/jobs/{doomed.id}")
    page.click("form[action$='/cancel'] button")
    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=60_000)
    expect(page.locator("#events")).to_contain_text(re.compile("cancel", re.IGNORECASE))
    assert client.fine_tuning.retrieve(doomed.id).status == "cancelled"

    # Files: format, samples, and the invalid file's error with its line.
    page.goto(f"{base}/files")
    expect(page.locator(f"tr[data-file='{train.id}']")).to_contain_text("conversation")
    expect(page.locator("tr", has_text="broken.jsonl")).to_contain_text("line 3")
    page.screenshot(path=str(tmp_path / "files.png"), full_page=True)

    # Phone width: the job page still fits (no horizontal scrolling of the page).
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    ppage = phone.new_page()
    sign_in(ppage, base, key)
    ppage.goto(f"{base}/jobs/{watched.id}")
    assert ppage.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    ppage.screenshot(path=str(tmp_path / "job-phone.png"), full_page=True)
    ppage.goto(f"{base}/")
    ppage.screenshot(path=str(tmp_path / "list-phone.png"), full_page=True)
    phone.close()

    # Another user sees none of it.
    other = browser.new_context()
    opage = other.new_page()
    sign_in(opage, base, new_key(server, "mallory"))
    assert opage.locator("tr[data-job]").count() == 0
    response = opage.goto(f"{base}/jobs/{watched.id}")
    assert response is not None and response.status == 404
    assert watched.model_output_name not in opage.content()
    opage.goto(f"{base}/files")
    assert train.id not in opage.content() and "broken.jsonl" not in opage.content()
    other.close()
    ctx.close()
    print(f"screenshots in {tmp_path}")  # noqa: T201


def test_pages_are_readable_without_javascript(server: LiveServer, browser) -> None:  # type: ignore[no-untyped-def]
    ctx = browser.new_context(java_script_enabled=False)
    page = ctx.new_page()
    sign_in(page, server.base_url, server.api_key)
    assert page.locator("h1").inner_text() == "Fine-tuning jobs"
    page.goto(server.base_url + "/files")
    assert page.locator("h1").inner_text() == "Files"
    ctx.close()
