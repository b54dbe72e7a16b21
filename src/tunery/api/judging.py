"""score_model graders judged by the inference engine: ``EngineJudge`` is the graders' ``Judge`` for a
request's user, so a judge model is any model that user may chat with (a base model, or one of their
fine-tuned models by name). Grading runs in a worker thread; each judge call hops back onto the event
loop, where the engine client lives.
"""

from __future__ import annotations

from typing import Any

import anyio.from_thread
from starlette.concurrency import run_in_threadpool

from tunery.api.deps import AppContext
from tunery.api.generation import engine_model
from tunery.graders.grading import JudgeReply
from tunery.inference.client import EngineError
from tunery.inference.protocol import GenerateRequest, Sampling
from tunery.store.models import User


class EngineJudge:
    def __init__(self, ctx: AppContext, user: User):
        self.ctx, self.user = ctx, user

    def complete(self, model: str, messages: list[dict[str, str]], *, max_tokens: int, temperature: float,
                 top_p: float, seed: int | None) -> JudgeReply:
        request = {"messages": messages, "max_tokens": max_tokens,
                   "sampling": Sampling(temperature=temperature, top_p=top_p, seed=seed)}
        return anyio.from_thread.run(self._complete, model, request)

    async def _complete(self, model: str, request: dict[str, Any]) -> JudgeReply:
        ref = await run_in_threadpool(engine_model, self.ctx, self.user, model)
        events = await self.ctx.engine.open(GenerateRequest(model=ref, user=self.user.id, **request))
        text, tokens = "", 0
        async for e in events:
            if e["type"] == "error":
                raise EngineError(503, e["message"])
            if e["type"] in ("token", "end"):
                text += e.get("content") or ""
            if e["type"] == "end":
                tokens = int(e.get("completion_tokens") or 0)
        return JudgeReply(text, tokens)
