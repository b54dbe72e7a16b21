"""``pytest -p tests.server_src``: the live servers, and every process the tests start, run the code
of another checkout, while the tests import this one's. It is how a test is watched failing on the
code from before a fix:

    git archive <commit> src | tar -x -C /tmp/before
    TUNERY_TEST_SERVER_SRC=/tmp/before/src PYTHONPATH=$PWD/src pytest -p tests.server_src tests/abuse/...
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # This process already imported its code from PYTHONPATH; the children read the new value.
    os.environ["PYTHONPATH"] = os.environ["TUNERY_TEST_SERVER_SRC"]
