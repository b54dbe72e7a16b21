"""Grade one model sample against its dataset item: ``grade(grader, sample, item, env)`` gives a
``Grade`` shaped like OpenAI's ``/v1/fine_tuning/alpha/graders/run`` answer (reward, sub-rewards, error
flags, time). Nothing a grader does raises here: a failure scores 0 and sets its error flag, so a run
counts failures instead of dying on them.

A multi grader scores each named grader, a failed one as 0, then computes ``calculate_output``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from tunery.graders.formula import FormulaError, parse_formula
from tunery.graders.sandbox import SandboxLimits, run_python_grader
from tunery.graders.schema import (
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from tunery.graders.templates import TemplateError, render
from tunery.graders.text_metrics import similarity

ERROR_FLAGS = ("formula_parse_error", "invalid_variable_error", "model_grader_parse_error",
               "model_grader_refusal_error", "model_grader_server_error", "other_error",
               "python_grader_runtime_error", "python_grader_server_error", "sample_parse_error",
               "truncated_observation_error", "unresponsive_reward_error")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class JudgeReply:
    text: str
    tokens: int


class Judge(Protocol):
    """Runs a score_model grader's model (the inference engine, in the server)."""

    def complete(self, model: str, messages: list[dict[str, str]], *, max_tokens: int, temperature: float,
                 top_p: float, seed: int | None) -> JudgeReply: ...


class Embedder(Protocol):
    def embed(self, texts: list[str]) -> list[list[float]]: ...


@dataclass(frozen=True)
class GraderEnv:
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    judge: Judge | None = None
    embedder: Embedder | None = None
    parallelism: int = 2  # samples graded at once by grade_many (python graders each take a process)


@dataclass
class Grade:
    reward: float
    name: str
    type: str
    scores: dict[str, float] = field(default_factory=dict)  # each named grader's score (multi), else own
    errors: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(ERROR_FLAGS, False))
    details: dict[str, str] = field(default_factory=dict)  # e.g. python_grader_runtime_error_details
    execution_time: float = 0.0
    token_usage: int = 0
    judge_models: set[str] = field(default_factory=set)

    @property
    def failed(self) -> bool:
        return any(self.errors.values())

    def fail(self, flag: str, detail: str | None = None, detail_key: str | None = None) -> Grade:
        self.reward = 0.0
        self.errors[flag] = True
        if detail is not None:
            self.details[detail_key or f"{flag}_details"] = detail
        return self


def sample_namespace(output_text: str) -> dict[str, Any]:
    """The ``sample`` a grader sees for a model's text output (``output_json`` when it is JSON)."""
    try:
        output_json = json.loads(output_text)
    except ValueError:
        output_json = None
    return {"output_text": output_text, "output_json": output_json, "output_tools": [],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": output_text}}]}


def grade(grader: Any, sample: dict[str, Any], item: Any, env: GraderEnv) -> Grade:
    started = time.perf_counter()
    result = _grade_multi(grader, sample, item, env) if isinstance(grader, MultiGrader) \
        else _grade_single(grader, sample, item, env)
    result.execution_time = time.perf_counter() - started
    return result


def grade_many(grader: Any, samples: Sequence[tuple[dict[str, Any], Any]], env: GraderEnv) -> list[Grade]:
    """Grade (sample, item) pairs, ``env.parallelism`` at a time, in order."""
    if env.parallelism <= 1 or len(samples) <= 1:
        return [grade(grader, s, i, env) for s, i in samples]
    with ThreadPoolExecutor(env.parallelism) as pool:
        return list(pool.map(lambda pair: grade(grader, pair[0], pair[1], env), samples))


def _grade_multi(grader: MultiGrader, sample: dict[str, Any], item: Any, env: GraderEnv) -> Grade:
    result = Grade(0.0, grader.name, grader.type)
    for key, sub in grader.graders.items():
        part = _grade_single(sub, sample, item, env)
        result.scores[key] = part.reward
        result.token_usage += part.token_usage
        result.judge_models |= part.judge_models
        for flag, raised in part.errors.items():
            result.errors[flag] = result.errors[flag] or raised
        result.details.update(part.details)
    try:
        result.reward = parse_formula(grader.calculate_output).evaluate(result.scores)
    except FormulaError as exc:
        return result.fail("other_error", f"calculate_output: {exc}")
    return result


def _grade_single(grader: Any, sample: dict[str, Any], item: Any, env: GraderEnv) -> Grade:
    result = Grade(0.0, grader.name, grader.type)
    namespaces = {"item": item, "sample": sample}
    try:
        if isinstance(grader, StringCheckGrader):
            result.reward = _string_check(grader, namespaces)
        elif isinstance(grader, TextSimilarityGrader):
            if grader.evaluation_metric == "cosine" and env.embedder is None:
                return result.fail("other_error", "evaluation_metric cosine needs an embedding model; none is "
                                   "configured (TUNERY_EMBEDDING_MODEL)")
            result.reward = _text_similarity(grader, namespaces, env)
        elif isinstance(grader, PythonGrader):
            return _python(grader, sample, item, env, result)
        elif isinstance(grader, ScoreModelGrader):
            return _score_model(grader, namespaces, env, result)
        else:
            raise TypeError(f"not a grader: {type(grader).__name__}")
    except TemplateError as exc:
        return result.fail("invalid_variable_error", str(exc))
    result.scores[grader.name] = result.reward
    return result


def _string_check(grader: StringCheckGrader, namespaces: dict[str, Any]) -> float:
    text, reference = render(grader.input, namespaces), render(grader.reference, namespaces)
    op = grader.operation
    if op == "eq":
        return float(text == reference)
    if op == "ne":
        return float(text != reference)
    if op == "like":
        return float(reference in text)
    return float(reference.lower() in text.lower())  # ilike


def _text_similarity(grader: TextSimilarityGrader, namespaces: dict[str, Any], env: GraderEnv) -> float:
    text, reference = render(grader.input, namespaces), render(grader.reference, namespaces)
    if grader.evaluation_metric != "cosine":
        return similarity(grader.evaluation_metric, text, reference)
    assert env.embedder is not None  # checked by the caller
    a, b = env.embedder.embed([text, reference])
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0


def _python(grader: PythonGrader, sample: dict[str, Any], item: Any, env: GraderEnv, result: Grade) -> Grade:
    outcome = run_python_grader(grader.source, sample, item, env.limits)
    if outcome.score is not None:
        result.reward = outcome.score
        result.scores[grader.name] = outcome.score
        return result
    if outcome.error == "timeout":
        return result.fail("unresponsive_reward_error", outcome.detail, "python_grader_runtime_error_details")
    if outcome.error in ("runtime", "memory"):
        return result.fail("python_grader_runtime_error", outcome.detail)
    result.details["python_grader_server_error_type"] = str(outcome.error)
    return result.fail("python_grader_server_error", outcome.detail, "python_grader_runtime_error_details")


def _score_model(grader: ScoreModelGrader, namespaces: dict[str, Any], env: GraderEnv, result: Grade) -> Grade:
    if env.judge is None:
        return result.fail("model_grader_server_error", "no inference engine is available to run the judge model",
                           "model_grader_server_error_details")
    low, high = grader.bounds
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": render(m.text(), namespaces)}
                for m in grader.input]
    messages.append({"role": "system", "content": f'Answer with only a JSON object {{"result": <a number from '
                                                  f'{low:g} to {high:g}>}}.'})
    params = grader.sampling_params
    try:
        reply = env.judge.complete(grader.model, messages,
                                   max_tokens=(params.max_completions_tokens if params else None) or 64,
                                   temperature=params.temperature if params and params.temperature is not None else 0.0,
                                   top_p=params.top_p if params and params.top_p is not None else 1.0,
                                   seed=params.seed if params else None)
    except Exception as exc:  # noqa: BLE001 - the judge's failure is this sample's failed grade
        return result.fail("model_grader_server_error", f"{type(exc).__name__}: {exc}",
                           "model_grader_server_error_details")
    result.token_usage = reply.tokens
    result.judge_models.add(grader.model)
    score = _judge_score(reply.text)
    if score is None:
        return result.fail("model_grader_parse_error")
    result.reward = min(max(score, low), high)  # a small judge strays outside the range; clamp into it
    result.scores[grader.name] = result.reward
    return result


def _judge_score(text: str) -> float | None:
    """``{"result": x}`` anywhere in the reply, else the first number in it."""
    start = text.find("{")
    while start != -1:
        end = text.find("}", start)
        try:
            value = json.loads(text[start : end + 1]).get("result") if end != -1 else None
        except (ValueError, AttributeError):
            value = None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        start = text.find("{", start + 1)
    match = _NUMBER.search(text)
    return float(match.group()) if match else None
