"""Graders in OpenAI's schema, checked and graded end to end (python graders in the real sandbox)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tunery.graders.grading import GraderEnv, JudgeReply, grade, sample_namespace
from tunery.graders.sandbox import SandboxLimits
from tunery.graders.schema import check_grader, parse_grader

ENV = GraderEnv(limits=SandboxLimits(wall_seconds=5, cpu_seconds=2, memory_bytes=512 << 20))


def string_check(op: str, reference: str = "{{ item.answer }}") -> dict[str, Any]:
    return {"type": "string_check", "name": op, "input": "{{ sample.output_text }}", "reference": reference,
            "operation": op}


@pytest.mark.parametrize(("op", "output", "expected"), [
    ("eq", "42", 1.0), ("eq", "42 ", 0.0), ("ne", "41", 1.0), ("ne", "42", 0.0),
    ("like", "it is 42.", 1.0), ("like", "it is 4", 0.0), ("ilike", "ANSWER: 42X", 1.0), ("ilike", "no", 0.0),
])
def test_string_check(op: str, output: str, expected: float) -> None:
    grader = parse_grader(string_check(op))
    assert grade(grader, sample_namespace(output), {"answer": "42" if op != "ilike" else "answer: 42x"},
                 ENV).reward == expected


def test_multi_grader_combines_named_graders_and_counts_a_failed_one_as_zero() -> None:
    grader = parse_grader({
        "type": "multi", "name": "combo", "calculate_output": "0.5 * exact + 0.25 * code + 0.25 * fuzzy",
        "graders": {
            "exact": string_check("eq"),
            "code": {"type": "python", "name": "code", "source": "def grade(sample, item):\n"
                     "    return float(int(sample['output_text']) == item['answer_int'])\n"},
            "fuzzy": {"type": "text_similarity", "name": "fuzzy", "input": "{{ sample.output_text }}",
                      "reference": "{{ item.answer }}", "evaluation_metric": "fuzzy_match"},
        }})
    assert check_grader(grader) == []
    good = grade(grader, sample_namespace("42"), {"answer": "42", "answer_int": 42}, ENV)
    assert (good.reward, good.scores, good.failed) == (1.0, {"exact": 1.0, "code": 1.0, "fuzzy": 1.0}, False)
    broken = grade(grader, sample_namespace("forty"), {"answer": "42", "answer_int": 42}, ENV)
    assert broken.scores["code"] == 0.0 and broken.errors["python_grader_runtime_error"]
    assert "ValueError" in broken.details["python_grader_runtime_error_details"]
    assert broken.reward == pytest.approx(0.25 * broken.scores["fuzzy"])


def test_a_template_naming_a_missing_field_fails_the_grade_instead_of_matching_empty() -> None:
    result = grade(parse_grader(string_check("ne", "{{ item.missing }}")), sample_namespace("x"), {}, ENV)
    assert result.reward == 0.0 and result.errors["invalid_variable_error"]


def test_check_grader_reports_every_problem_with_what_to_change() -> None:
    grader = parse_grader({
        "type": "multi", "name": "m", "calculate_output": "a + nothing",
        "graders": {
            "a": {"type": "python", "name": "a", "source": "def score(sample, item):\n    return 1\n"},
            "b": {"type": "text_similarity", "name": "b", "input": "{{ output }}", "reference": "x",
                  "evaluation_metric": "meteor"},
            "c": {"type": "text_similarity", "name": "c", "input": "x", "reference": "y",
                  "evaluation_metric": "cosine"},
        }})
    problems = check_grader(grader)
    assert any("graders.a" in p and "grade(sample, item)" in p for p in problems)
    assert any("graders.b: input" in p for p in problems)
    assert any("meteor" in p for p in problems)
    assert any("cosine needs an embedding model" in p for p in problems)
    assert any("calculate_output names nothing" in p for p in problems)
    assert check_grader(parse_grader({"type": "python", "name": "p", "source": "def grade(:"}))[0].startswith(
        "source does not parse")


def test_parse_grader_refuses_unknown_fields_and_operations() -> None:
    with pytest.raises(ValidationError, match="pass_threshold"):
        parse_grader({**string_check("eq"), "pass_threshold": 0.5})
    with pytest.raises(ValidationError, match="operation"):
        parse_grader(string_check("matches"))
    single = parse_grader({"type": "multi", "name": "m", "calculate_output": "e", "graders": string_check("eq")})
    assert list(single.graders) == ["eq"]  # the SDK's one-grader form is named by its own name


class ScriptedJudge:
    """Stands in for the inference engine at the Judge seam (the engine-backed judge has its own test)."""

    def __init__(self, text: str):
        self.text, self.calls = text, []

    def complete(self, model: str, messages: list[dict[str, str]], **params: Any) -> JudgeReply:
        self.calls.append((model, messages, params))
        return JudgeReply(self.text, 7)


@pytest.mark.parametrize(("reply", "reward", "failed"), [
    ('{"result": 0.8, "steps": []}', 0.8, False), ("Score: 7", 5.0, False), ("no idea", 0.0, True)])
def test_score_model_renders_the_prompt_and_reads_the_judges_number(reply: str, reward: float, failed: bool) -> None:
    grader = parse_grader({"type": "score_model", "name": "judge", "model": "tunery/tiny-llama", "range": [0, 5],
                           "input": [{"role": "system", "content": "Grade the answer."},
                                     {"role": "user", "content": "Q: {{ item.q }} A: {{ sample.output_text }}"}],
                           "sampling_params": {"temperature": 0.2, "max_completions_tokens": 20}})
    judge = ScriptedJudge(reply)
    result = grade(grader, sample_namespace("4"), {"q": "2+2"}, GraderEnv(judge=judge))
    assert (result.reward, result.failed, result.token_usage) == (reward, failed, 7)
    model, messages, params = judge.calls[0]
    assert model == "tunery/tiny-llama" and messages[1]["content"] == "Q: 2+2 A: 4"
    assert params["temperature"] == 0.2 and params["max_tokens"] == 20
    assert result.errors["model_grader_parse_error"] == failed
