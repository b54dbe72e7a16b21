"""Request bodies of ``POST /v1/chat/completions`` and ``POST /v1/completions``: OpenAI's fields, plus
Together's (``top_k``, ``repetition_penalty``, ``min_p``, integer ``logprobs``, ``reasoning``,
``context_length_exceeded_behavior``) and vLLM's common extensions (``ignore_eos``,
``chat_template_kwargs``). A field the engine cannot honour is refused by name rather than ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunery.inference.protocol import Sampling
from tunery.inference.sampling import MAX_TOP_LOGPROBS


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # -1 or 0: no cut (vLLM writes -1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[int, float] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    context_length_exceeded_behavior: Literal["error", "truncate"] = "error"
    echo: bool = False
    user: str | None = None  # the caller's end-user id (OpenAI); nothing here depends on it

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v: dict[int, float] | None) -> dict[int, float] | None:
        if v and any(not -100 <= b <= 100 for b in v.values()):
            raise ValueError("logit_bias values must be in [-100, 100]")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def sampling(self, logprobs: int | None) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p,
                        top_k=None if self.top_k is None else max(0, self.top_k), min_p=self.min_p,
                        repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
                        frequency_penalty=self.frequency_penalty, logit_bias=self.logit_bias or {}, seed=self.seed,
                        n=self.n, stop=self.stops(), ignore_eos=self.ignore_eos, logprobs=logprobs)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, tool_call_id, reasoning, …: the template's

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _known_parts(cls, v: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        """Text parts, and image parts for vision-language models (the engine refuses them for text models
        and decodes them)."""
        if isinstance(v, list):
            kinds = sorted({str(p.get("type")) for p in v if p.get("type") not in ("text", "image_url")})
            if kinds:
                raise ValueError(f"only text and image_url content parts are supported; got {', '.join(kinds)}")
            if any(p.get("type") == "image_url" and not (isinstance(p.get("image_url"), dict)
                                                         and isinstance(p["image_url"].get("url"), str)) for p in v):
                raise ValueError('an image_url part must be {"type": "image_url", "image_url": {"url": "data:..."}}')
        return v


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = "function"
    function: FunctionDef


class Reasoning(BaseModel):
    enabled: bool


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | int | None = None  # OpenAI: a bool (with top_logprobs); Together: how many top tokens
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None  # every call the model writes is returned
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning: Reasoning | None = None  # Together: turns the template's thinking on or off
    reasoning_effort: str | None = None

    @field_validator("logprobs")
    @classmethod
    def _logprobs_range(cls, v: bool | int | None) -> bool | int | None:
        if not isinstance(v, bool) and v is not None and not 0 <= v <= MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs must be a boolean or an integer in [0, {MAX_TOP_LOGPROBS}]")
        return v

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        problems = []
        if self.tool_choice is not None and self.tool_choice not in ("none", "auto"):
            problems.append("tool_choice: only 'auto' and 'none' are supported (nothing forces a particular call)")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            problems.append("response_format: only {'type': 'text'} is supported")
        if self.top_logprobs and self.logprobs is not True:
            problems.append("top_logprobs needs logprobs: true")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def openai_logprobs(self) -> bool:
        """OpenAI's shape (a boolean ``logprobs``), else Together's (an integer)."""
        return isinstance(self.logprobs, bool)

    def logprob_count(self) -> int | None:
        if self.logprobs is None or self.logprobs is False:
            return None
        if self.logprobs is True:
            return self.top_logprobs or 0
        return int(self.logprobs)

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def template_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.chat_template_kwargs or {})
        if self.reasoning is not None:
            kwargs.setdefault("enable_thinking", self.reasoning.enabled)
        if self.reasoning_effort is not None:
            kwargs.setdefault("reasoning_effort", self.reasoning_effort)
        return kwargs


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] = Field(min_length=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    suffix: str | None = None

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        problems = []
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) > 1:
            problems.append("prompt: send one prompt per request")
        if self.suffix:
            problems.append("suffix is not supported")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def single_prompt(self) -> str | list[int]:
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            return str(self.prompt[0])
        return self.prompt  # type: ignore[return-value]  # str or list[int], checked above
