"""Fuzz the jobs, models and download routes: no 5xx, every error in Together's shape."""

from __future__ import annotations

from tests.conftest import LiveServer
from tests.fuzzing import fuzz_routes


def test_jobs_routes_never_5xx_and_errors_have_together_shape(live_server: LiveServer) -> None:
    fuzz_routes(live_server, r"^/(v1/fine-tunes|v1/finetune|v1/models|v3/whoami|healthz)", min_operations=12,
                examples=15)
