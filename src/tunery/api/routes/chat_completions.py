"""``POST /v1/chat/completions``: a conversation through the model's chat template, answered by the
inference engine (``tunery.api.generation`` forwards and renders)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from tunery.api.deps import Ctx, CurrentUser
from tunery.api.generation import generate
from tunery.api.schemas.completions import ChatCompletionRequest

router = APIRouter(tags=["inference"])


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, ctx: Ctx,
                           user: CurrentUser) -> JSONResponse | StreamingResponse:
    request = {
        "messages": [m.model_dump(exclude_none=True) for m in body.messages],
        "tools": [t.model_dump(exclude_none=True) for t in body.tools] if body.tools and body.tool_choice != "none"
        else None,
        "chat_template_kwargs": body.template_kwargs(),
        "max_tokens": body.completion_limit(),
        "context_length_exceeded_behavior": body.context_length_exceeded_behavior,
        "sampling": body.sampling(body.logprob_count()),
    }
    return await generate(ctx, user, body.model, request, "chat", body.stream,
                          "openai" if body.openai_logprobs else "together", body.include_usage)
