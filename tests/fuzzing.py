"""Property-based fuzzing of routes from the server's own /openapi.json (schemathesis): no input may
cause a 5xx, and every error is in Together's envelope.

Drives schemathesis' strategies with hypothesis directly: its pytest loader (``from_fixture``)
does not work with pytest 9, and the schema needs the live server, which exists only at run time.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.conftest import LiveServer


def check_response(case: Any, response: Any) -> None:
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["type"], body


def fuzz_routes(server: LiveServer, path_regex: str, *, min_operations: int, examples: int = 20) -> None:
    """Fuzz every operation whose path matches ``path_regex``, positive and negative cases."""
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json").include(path_regex=path_regex)
    headers = {"Authorization": f"Bearer {server.api_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= min_operations, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def fuzz(case: Any) -> None:
                response = case.call(headers=headers, timeout=60, allow_redirects=False)
                check_response(case, response)

            try:
                fuzz()
            except Unsatisfiable:
                # an operation with nothing to get wrong (e.g. GET /v1/files) has no negative cases
                assert mode is GenerationMode.NEGATIVE, operation.label
