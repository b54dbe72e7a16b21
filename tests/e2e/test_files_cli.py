"""`together files upload|list|retrieve|download|delete|check`: the official CLI as a subprocess with
a clean HOME against a live server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LiveServer, cli_env
from tests.e2e.test_files_sdk import INVALID, VALID, write_jsonl

TOGETHER = str(Path(sys.executable).parent / "together")


@pytest.fixture()
def tg(live_server: LiveServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    env = cli_env(live_server, tmp_path / "home")

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([TOGETHER, *args], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        if ok:
            assert r.returncode == 0, f"together {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
        return r

    return run


def test_upload_list_retrieve_download_delete(tg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_jsonl(tmp_path / "cli.jsonl", VALID["conversation"])
    uploaded = json.loads(tg("files", "upload", str(path), "--json").stdout)
    file_id = uploaded["id"]
    assert uploaded["processing_status"] == "COMPLETED" and uploaded["FileType"] == "jsonl"

    assert file_id in tg("files", "list", "--no-json").stdout  # the table (sorts by int created_at)
    got = json.loads(tg("files", "retrieve", file_id, "--json").stdout)
    assert got["filename"] == "cli.jsonl" and got["bytes"] == path.stat().st_size

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    tg("files", "download", file_id, "--output", str(out_dir), "--no-json")
    assert (out_dir / "cli.jsonl").read_bytes() == path.read_bytes()

    assert "deleted" in tg("files", "delete", file_id, "--no-json").stdout.lower()
    gone = tg("files", "download", file_id, "--stdout", ok=False)
    assert gone.returncode == 1 and "no file with id" in gone.stdout + gone.stderr


def test_invalid_and_duplicate_uploads_fail_with_clear_messages(tg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows, expected = INVALID["conversation"]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    r = tg("files", "upload", str(bad), "--no-json", ok=False)
    assert r.returncode == 1 and expected in r.stdout + r.stderr

    good = write_jsonl(tmp_path / "twice.jsonl", VALID["general"])
    first = json.loads(tg("files", "upload", str(good), "--json").stdout)["id"]
    again = tg("files", "upload", str(good), "--json", ok=False)
    assert again.returncode == 1 and json.loads(again.stdout)["file_id"] == first


def test_check_is_local(tg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = write_jsonl(tmp_path / "ok.jsonl", VALID["instruction"])
    assert "Checks passed" in tg("files", "check", str(good), "--no-json").stdout
    broken = write_jsonl(tmp_path / "broken.jsonl", INVALID["not-json"][0])
    r = tg("files", "check", str(broken), "--no-json", ok=False)
    assert "line 3" in (r.stdout + r.stderr).lower()
