"""``POST /v1/fine_tuning/alpha/graders/validate`` and ``/run``: OpenAI's grader endpoints.

``validate`` answers ``{"grader": ...}`` for a grader a reinforcement job could use, else a 400 that
lists every problem. ``run`` grades one ``model_sample`` (the model's text) against one ``item`` (a
dataset row) as a reinforcement job would, python graders in the sandbox, and answers OpenAI's
``GraderRunResponse``: the reward, sub-rewards and which errors happened (a failed grader is a
reward of 0 with its error flag, not an HTTP error). score_model graders are judged by the inference
engine (``api/judging.py``), with any model the caller may chat with.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from tunery.api.deps import Ctx, CurrentUser
from tunery.api.judging import EngineJudge
from tunery.errors import InvalidRequest
from tunery.graders.grading import Grade, GraderEnv, grade, sample_namespace
from tunery.graders.schema import read_grader

router = APIRouter(tags=["graders"])


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grader: dict[str, Any]


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grader: dict[str, Any]
    model_sample: str
    item: Any = None


def _grader(data: dict[str, Any]) -> Any:
    grader, problems = read_grader(data)
    if problems:
        raise InvalidRequest("invalid grader: " + "; ".join(problems), param="grader")
    return grader


@router.post("/v1/fine_tuning/alpha/graders/validate")
def validate_grader(body: ValidateRequest, user: CurrentUser) -> dict[str, Any]:
    return {"grader": _grader(body.grader).model_dump(mode="json", exclude_none=True)}


@router.post("/v1/fine_tuning/alpha/graders/run")
async def run_grader(body: RunRequest, ctx: Ctx, user: CurrentUser) -> dict[str, Any]:
    grader = _grader(body.grader)
    env = GraderEnv(judge=EngineJudge(ctx, user))
    result = await run_in_threadpool(grade, grader, sample_namespace(body.model_sample), body.item or {}, env)
    return run_response(result)


def run_response(result: Grade) -> dict[str, Any]:
    errors: dict[str, Any] = {**result.errors, **result.details}
    errors.setdefault("python_grader_runtime_error_details", None)
    errors.setdefault("python_grader_server_error_type", None)
    errors.setdefault("model_grader_server_error_details", None)
    return {
        "reward": result.reward,
        "sub_rewards": result.scores if result.type == "multi" else {},
        "metadata": {"name": result.name, "type": result.type, "errors": errors,
                     "execution_time": result.execution_time, "scores": result.scores,
                     "token_usage": result.token_usage or None, "sampled_model_name": None},
        "model_grader_token_usage_per_model": {m: {"total_tokens": result.token_usage} for m in result.judge_models},
    }
