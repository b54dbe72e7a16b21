"""A shortened `tunery quickstart` end to end: it starts its own server (none answers at the
configured URL), uploads, trains, watches, downloads, evaluates and prints the summary."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import tunery
from tests.conftest import free_port

pytestmark = pytest.mark.slow


def test_shortened_quickstart(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out_dir = tmp_path / "qs"
    result = tunery(None, "quickstart", "--dir", out_dir, "--samples", "16", "--epochs", "2", timeout=300,
                    TUNERY_BASE_URL=url, TUNERY_DATA_DIR=str(tmp_path / "data"))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"Started a tunery server on {url}" in out
    assert "Wrote 16 question → answer pairs" in out and "Training started" in out
    assert re.search(r"tunery/tiny-llama \(before\)\s+│\s+\d+/16", out), out
    assert re.search(r"default/tiny-llama-quickstart-\w+ \(after\)\s+│\s+\d+/16", out), out
    job_id = re.search(r"Job\s+(ft-[0-9a-f-]{36})", out).group(1)  # type: ignore[union-attr]
    assert "Done in" in out and f'client.fine_tuning.retrieve("{job_id}")' in out
    assert (out_dir / "model" / "config.json").is_file() and (out_dir / "quickstart.jsonl").is_file()
    assert len((out_dir / "quickstart.jsonl").read_text().splitlines()) == 16
    assert "stopped; restart it with: tunery serve" in out
    with pytest.raises(httpx.ConnectError):  # the server it started is gone
        httpx.get(url + "/healthz", timeout=2)
