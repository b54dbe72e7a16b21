"""OpenAI's grader endpoints through the official openai SDK against a live server."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import LiveServer

EXACT: dict[str, Any] = {"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
                         "reference": "{{ item.answer }}", "operation": "eq"}


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> OpenAI:
    return OpenAI(base_url=f"{live_server.base_url}/v1", api_key=live_server.api_key, max_retries=0)


def test_validate_returns_the_grader_and_refuses_a_broken_one(client: OpenAI) -> None:
    multi = {"type": "multi", "name": "m", "calculate_output": "0.5 * exact + 0.5 * fuzzy",
             "graders": {"exact": EXACT, "fuzzy": {**EXACT, "type": "text_similarity", "name": "fuzzy",
                                                   "evaluation_metric": "fuzzy_match", "operation": None}}}
    del multi["graders"]["fuzzy"]["operation"]
    assert client.fine_tuning.alpha.graders.validate(grader=multi).grader.type == "multi"  # type: ignore[arg-type,union-attr]
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.alpha.graders.validate(grader={**EXACT, "reference": "{{ answer }}", "operation": "is"})  # type: ignore[typeddict-item]
    message = caught.value.body["message"]  # type: ignore[index]
    assert "operation" in message


def test_run_grades_a_sample_and_reports_a_failed_python_grader_as_reward_zero(client: OpenAI) -> None:
    run = client.fine_tuning.alpha.graders.run(grader=EXACT, model_sample="42", item={"answer": "42"})  # type: ignore[arg-type]
    assert run.reward == 1.0 and run.metadata.type == "string_check"
    assert not any(v for k, v in run.metadata.errors.model_dump().items() if isinstance(v, bool))
    code = {"type": "python", "name": "code",
            "source": "import socket\ndef grade(sample, item):\n    socket.socket()\n    return 1.0\n"}
    failed = client.fine_tuning.alpha.graders.run(grader=code, model_sample="x", item={})  # type: ignore[arg-type]
    assert failed.reward == 0.0 and failed.metadata.errors.python_grader_runtime_error
    assert "Operation not permitted" in (failed.metadata.errors.python_grader_runtime_error_details or "")


@pytest.mark.slow
def test_a_score_model_grader_is_judged_by_the_inference_engine(client: OpenAI) -> None:
    judge = {"type": "score_model", "name": "judge", "model": "tunery/tiny-llama", "range": [0, 10],
             "input": [{"role": "user", "content": "Is {{ sample.output_text }} the answer to {{ item.q }}?"}],
             "sampling_params": {"temperature": 0, "max_completions_tokens": 8}}
    run = client.fine_tuning.alpha.graders.run(grader=judge, model_sample="4", item={"q": "2+2"})  # type: ignore[arg-type]
    errors = run.metadata.errors
    assert not errors.model_grader_server_error, errors.model_grader_server_error_details
    assert run.metadata.token_usage and run.metadata.token_usage > 0  # the tiny model really answered
    assert 0 <= run.reward <= 10 and (run.reward > 0 or errors.model_grader_parse_error)
    again = client.fine_tuning.alpha.graders.run(grader=judge, model_sample="4", item={"q": "2+2"})  # type: ignore[arg-type]
    assert again.reward == run.reward  # greedy: the same verdict
    missing = client.fine_tuning.alpha.graders.run(grader={**judge, "model": "no-such-model"}, model_sample="4",  # type: ignore[arg-type]
                                                   item={"q": "2+2"})
    assert missing.reward == 0.0 and missing.metadata.errors.model_grader_server_error
