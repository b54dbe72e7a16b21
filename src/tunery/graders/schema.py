"""Graders as OpenAI defines them (``method.reinforcement.grader`` and ``/v1/fine_tuning/alpha/graders``):
the wire shapes, parsed once into these models, and ``check_grader``, which reports every problem a
well-formed grader can still have (a python source without ``grade``, a formula naming no grader, a
template outside the ``item``/``sample`` namespaces, a metric this server cannot compute) together.

The Together API's ``grpo`` method takes the same grader objects.
"""

from __future__ import annotations

import ast
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from tunery.graders.formula import FormulaError, parse_formula
from tunery.graders.templates import TemplateError, template_paths

MAX_SOURCE_BYTES = 256 * 1024  # as OpenAI's python graders
SIMILARITY_METRICS = ("cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3",
                      "rouge_4", "rouge_5", "rouge_l")


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)


class StringCheckGrader(_Grader):
    type: Literal["string_check"]
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(_Grader):
    type: Literal["text_similarity"]
    input: str
    reference: str
    evaluation_metric: Literal["cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2",
                               "rouge_3", "rouge_4", "rouge_5", "rouge_l"]


class PythonGrader(_Grader):
    type: Literal["python"]
    source: str
    image_tag: str | None = None  # OpenAI picks a runtime image; here there is one runtime, the server's


class InputText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["input_text", "output_text"]
    text: str


class JudgeMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system", "developer"]
    content: str | InputText | list[str | InputText]
    type: Literal["message"] | None = None

    def text(self) -> str:
        parts = self.content if isinstance(self.content, list) else [self.content]
        return "".join(p if isinstance(p, str) else p.text for p in parts)


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_completions_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None


class ScoreModelGrader(_Grader):
    type: Literal["score_model"]
    model: str
    input: list[JudgeMessage] = Field(min_length=1)
    range: list[float] | None = None
    sampling_params: SamplingParams | None = None

    @field_validator("range")
    @classmethod
    def _range(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 2 or value[0] >= value[1]):
            raise ValueError(f"range must be two numbers [low, high] with low < high; got {value}")
        return value

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.range[0], self.range[1]) if self.range else (0.0, 1.0)


SingleGrader = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader, Field(discriminator="type")]


class MultiGrader(_Grader):
    type: Literal["multi"]
    graders: dict[str, SingleGrader]
    calculate_output: str

    @model_validator(mode="before")
    @classmethod
    def _one_grader_is_named_by_itself(cls, data: Any) -> Any:
        # OpenAI's SDK types ``graders`` as one grader; its guide shows a map of named graders. Take both.
        if isinstance(data, dict) and isinstance(data.get("graders"), dict) and "type" in data["graders"]:
            one = data["graders"]
            data = {**data, "graders": {str(one.get("name") or "grader"): one}}
        return data


Grader = Annotated[SingleGrader | MultiGrader, Field(discriminator="type")]
GRADER = TypeAdapter(Grader)


def parse_grader(data: Any) -> StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | MultiGrader:
    """Parse a grader object (raises pydantic's ``ValidationError``)."""
    return GRADER.validate_python(data)


def read_grader(data: Any, *, has_embedder: bool = False,
                judge_models: set[str] | None = None) -> tuple[Any, list[str]]:
    """Parse and check a grader object: (the grader, []) or (None or the grader, every problem)."""
    try:
        grader = parse_grader(data)
    except ValidationError as exc:
        return None, [_shown(e) for e in exc.errors()]
    return grader, check_grader(grader, has_embedder=has_embedder, judge_models=judge_models)


def _shown(error: Any) -> str:
    # The discriminated unions put the grader type in the location (graders.a.python.source); keep
    # the path a user wrote.
    loc = [str(p) for p in error["loc"] if str(p) not in ("string_check", "text_similarity", "python",
                                                                "score_model", "multi")]
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{'.'.join(loc)}: {message}" if loc else message


def check_grader(grader: Any, *, has_embedder: bool = False, judge_models: set[str] | None = None) -> list[str]:
    """Every problem with a parsed grader, as messages that say what to change (empty: it is fine).

    ``judge_models``: the models a score_model grader may name (None: any, checked when grading)."""
    if isinstance(grader, MultiGrader):
        problems = [f"graders.{key}: {p}" for key, sub in grader.graders.items()
                    for p in check_grader(sub, has_embedder=has_embedder, judge_models=judge_models)]
        try:
            names = parse_formula(grader.calculate_output).names
        except FormulaError as exc:
            return [*problems, f"calculate_output: {exc}"]
        unknown = sorted(names - set(grader.graders))
        if unknown:
            problems.append(f"calculate_output names {', '.join(unknown)}, which are not among the graders "
                            f"({', '.join(sorted(grader.graders))})")
        return problems
    problems = [f"{where}: {p}" for where, text in _templates(grader) for p in _template_problems(text)]
    if isinstance(grader, PythonGrader):
        problems += _source_problems(grader.source)
    if isinstance(grader, TextSimilarityGrader):
        if grader.evaluation_metric == "meteor":
            problems.append("evaluation_metric meteor is not available here: it needs the WordNet corpus, which "
                            "this server does not ship; use bleu, gleu, rouge_1..rouge_5, rouge_l or fuzzy_match")
        if grader.evaluation_metric == "cosine" and not has_embedder:
            problems.append("evaluation_metric cosine needs an embedding model, and this server has none "
                            "configured (TUNERY_EMBEDDING_MODEL); use another metric or configure one")
    if isinstance(grader, ScoreModelGrader) and judge_models is not None and grader.model not in judge_models:
        problems.append(f"model {grader.model!r} is not available as a judge here; available: "
                        f"{', '.join(sorted(judge_models)) or 'none'}")
    return problems


def _templates(grader: Any) -> list[tuple[str, str]]:
    if isinstance(grader, (StringCheckGrader, TextSimilarityGrader)):
        return [("input", grader.input), ("reference", grader.reference)]
    if isinstance(grader, ScoreModelGrader):
        return [(f"input[{i}].content", m.text()) for i, m in enumerate(grader.input)]
    return []


def _template_problems(text: str) -> list[str]:
    try:
        template_paths(text)
    except TemplateError as exc:
        return [str(exc)]
    return []


def _source_problems(source: str) -> list[str]:
    if len(source.encode()) > MAX_SOURCE_BYTES:
        return [f"source must be at most {MAX_SOURCE_BYTES // 1024} KB; got {len(source.encode()) // 1024} KB"]
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [f"source does not parse: {exc.msg} (line {exc.lineno})"]
    if not any(isinstance(node, ast.FunctionDef) and node.name == "grade" for node in tree.body):
        return ["source must define a top-level function grade(sample, item) that returns a number"]
    return []
