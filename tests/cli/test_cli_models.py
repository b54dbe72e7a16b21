"""`tunery models list|add|remove` on a data dir's database (no server needed).

Kept to few calls: anything that needs the built-in model names imports torch (seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import assert_one_line_error, tunery


def test_add_list_remove(tmp_path: Path) -> None:
    d = ("--data-dir", str(tmp_path / "data"))
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")

    added = tunery(None, "models", "add", "acme/my-model", model_dir, *d)
    assert added.returncode == 0 and "Registered acme/my-model" in added.stdout
    listed = json.loads(tunery(None, "models", "list", *d, "--json").stdout)
    assert {"name": "tunery/tiny-llama", "source": "built-in", "path": None} in listed
    assert {"name": "acme/my-model", "source": "registered", "path": str(model_dir)} in listed

    assert tunery(None, "models", "remove", "acme/my-model", *d).returncode == 0
    assert_one_line_error(tunery(None, "models", "remove", "tunery/tiny-llama", *d), "built-in")
    assert_one_line_error(tunery(None, "models", "add", "x/y", tmp_path / "missing", *d), "no config.json")


def test_alias_stands_for_a_model_and_is_listed(tmp_path: Path) -> None:
    d = ("--data-dir", str(tmp_path / "data"))
    done = tunery(None, "models", "alias", "gpt-4o-mini-2024-07-18", "tunery/tiny-llama", *d)
    assert done.returncode == 0 and "gpt-4o-mini-2024-07-18 → tunery/tiny-llama" in done.stdout
    listed = json.loads(tunery(None, "models", "list", *d, "--json").stdout)
    assert {"name": "gpt-4o-mini-2024-07-18", "source": "alias", "path": "tunery/tiny-llama"} in listed
    assert_one_line_error(tunery(None, "models", "alias", "gpt-x", "acme/not-here", *d), "acme/not-here")
    assert tunery(None, "models", "unalias", "gpt-4o-mini-2024-07-18", *d).returncode == 0
