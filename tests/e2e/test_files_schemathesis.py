"""Fuzz the files routes from the server's own /openapi.json: no 5xx, every error in Together's shape."""

from __future__ import annotations

from tests.conftest import LiveServer
from tests.fuzzing import fuzz_routes


def test_files_routes_never_5xx_and_errors_have_together_shape(live_server: LiveServer) -> None:
    fuzz_routes(live_server, r"^/(v1/files|uploads/)", min_operations=10)
