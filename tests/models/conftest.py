"""The built-in tiny text model, built once per session in a temp dir (tiny_vlm: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunery.models.builtin import ensure_builtin


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_builtin("tunery/tiny-llama", tmp_path_factory.getbasetemp() / "builtin-models")
