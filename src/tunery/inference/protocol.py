"""What the API sends the inference engine and what comes back, over loopback (or fleet) HTTP.

    POST /generate   GenerateRequest (JSON)
      → 200, newline-delimited JSON events: one ``start``, then ``token`` events and one ``end`` per
        choice (``index``), or an ``error`` event if generation broke off
      → 4xx/5xx ``{"error": {"message", "type", "param", "code"}}`` when the request cannot start
        (unknown model, prompt too long, …), decided before the first event
    GET /healthz     {"status": "ok", "engine": ..., "models": [...]}

The engine trusts the API: it never sees API keys or the database, only a ``ModelRef`` the API built
after checking that the caller may use that model, and the caller's user id for the per-user cap.
Requests carry a bearer token derived from the server's secret key (``engine_token``).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Literal

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    """Which weights to generate with: a base model, plus a LoRA adapter or instead full weights
    from the blob store (by key; keys never change content, so they are also cache keys)."""

    base: str
    base_path: str | None = None  # set when ``base`` is an operator-registered directory
    revision: str | None = None  # Hugging Face revision of ``base``
    adapter_key: str | None = None
    weights_key: str | None = None


class Sampling(BaseModel):
    """Sampling settings as the caller gave them; None means the model's generation config default
    (as vLLM does), else the OpenAI default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = Field(default_factory=dict)
    seed: int | None = None
    n: int = 1
    stop: list[str] = Field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: also the k most likely


class GenerateRequest(BaseModel):
    model: ModelRef
    user: str
    # Exactly one of: a conversation (rendered by the model's chat template) or a prompt.
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    prompt: str | list[int] | None = None
    max_tokens: int | None = None  # None: up to the context's end (capped by the engine's limit)
    # "error": a prompt plus max_tokens beyond the context is refused; "truncate": max_tokens shrinks.
    context_length_exceeded_behavior: Literal["error", "truncate"] = "error"
    sampling: Sampling = Field(default_factory=Sampling)


def engine_token(secret: bytes) -> str:
    """The bearer token the API presents to the engine: derived, so the secret itself never travels."""
    return hmac.new(secret, b"tunery-inference-engine", hashlib.sha256).hexdigest()
