"""``POST /v1/completions``: raw text continuation (no chat template), answered by the inference
engine (``tunery.api.generation`` forwards and renders)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from tunery.api.deps import Ctx, CurrentUser
from tunery.api.generation import generate
from tunery.api.schemas.completions import CompletionRequest

router = APIRouter(tags=["inference"])
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, ctx: Ctx, user: CurrentUser) -> JSONResponse | StreamingResponse:
    request = {
        "prompt": body.single_prompt(),
        "max_tokens": body.max_tokens or DEFAULT_MAX_TOKENS,
        "context_length_exceeded_behavior": body.context_length_exceeded_behavior,
        "sampling": body.sampling(body.logprobs),
    }
    return await generate(ctx, user, body.model, request, "text", body.stream, "legacy", body.include_usage)
