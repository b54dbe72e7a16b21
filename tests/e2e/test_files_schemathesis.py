"""Property-based fuzzing of the files routes from the server's own /openapi.json (schemathesis):
no input may cause a 5xx, and every error is in Together's envelope.

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

FILES_PATHS = r"^/(v1/files|uploads/)"
EXAMPLES_PER_OPERATION = 20


def check_response(case: Any, response: Any) -> None:
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["type"], body


def test_files_routes_never_5xx_and_errors_have_together_shape(live_server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{live_server.base_url}/openapi.json").include(path_regex=FILES_PATHS)
    headers = {"Authorization": f"Bearer {live_server.api_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def fuzz(case: Any) -> None:
                response = case.call(headers=headers, timeout=30, allow_redirects=False)
                check_response(case, response)

            try:
                fuzz()
            except Unsatisfiable:
                # an operation with nothing to get wrong (e.g. GET /v1/files) has no negative cases
                assert mode is GenerationMode.NEGATIVE, operation.label
