"""Forwarding generation requests to the inference engine and rendering its events as OpenAI's (and
Together's) responses: a whole ``chat.completion`` / ``text_completion``, or server-sent event chunks
ending with ``data: [DONE]``.

The API's part is small: authorise (the route's dependency), resolve the model name for this user
through the store (``engine_model``), forward, and render. Everything about the model itself happens in
the engine process.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunery.api.deps import AppContext
from tunery.inference.client import EngineError
from tunery.inference.protocol import GenerateRequest, ModelRef
from tunery.store.base_models import registered_models
from tunery.store.models import User
from tunery.store.served_models import resolve_model_name

Kind = Literal["chat", "text"]
LogprobStyle = Literal["openai", "together", "legacy"]


def engine_model(ctx: AppContext, user: User, name: str) -> ModelRef:
    """What ``name`` means for ``user``, as the engine needs it (raises NotFound)."""
    with ctx.db.session() as s:
        served = resolve_model_name(s, user.id, name)
        base_path = registered_models(s).get(served.base)
    return ModelRef(base=served.base, base_path=base_path, revision=served.revision,
                    adapter_key=served.adapter_key, weights_key=served.weights_key)


async def open_events(ctx: AppContext, user: User, name: str, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Resolve ``name`` and open the engine's event stream for ``request`` (the engine's fields but
    ``model`` and ``user``). Refusals raise here, before any event."""
    ref = await run_in_threadpool(engine_model, ctx, user, name)
    return await ctx.engine.open(GenerateRequest(model=ref, user=user.id, **request))


async def generate(ctx: AppContext, user: User, name: str, request: dict[str, Any], kind: Kind, stream: bool,
                   logprobs: LogprobStyle, include_usage: bool = False) -> JSONResponse | StreamingResponse:
    """Answer ``request`` for model ``name`` whole or as server-sent events."""
    events = await open_events(ctx, user, name, request)
    render = Render(kind, name, logprobs, include_usage)
    if stream:
        return StreamingResponse(render.chunks(events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse(await render.whole(events))


@dataclass
class ChoiceState:
    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    tokens: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)  # per-token logprob entries


@dataclass
class Render:
    kind: Kind
    model: str
    logprobs: LogprobStyle
    include_usage: bool
    id: str = field(init=False)
    created: int = field(default_factory=lambda: int(time.time()))
    prompt_tokens: int = 0

    def __post_init__(self) -> None:
        self.id = f"{'chatcmpl' if self.kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"

    @property
    def object(self) -> str:
        return "chat.completion" if self.kind == "chat" else "text_completion"

    def usage(self, choices: dict[int, ChoiceState]) -> dict[str, int]:
        completion = sum(c.tokens for c in choices.values())
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    # -- one whole response -----------------------------------------------------------------------

    async def whole(self, events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
        choices: dict[int, ChoiceState] = {}
        async for e in events:
            if e["type"] == "error":
                raise EngineError(503, e["message"])
            if e["type"] == "start":
                self.prompt_tokens = e["prompt_tokens"]
                continue
            c = choices.setdefault(e["index"], ChoiceState())
            c.content += e.get("content") or ""
            c.reasoning += e.get("reasoning") or ""
            if e["type"] == "token" and "logprob" in e:
                c.entries.append(e)
            if e["type"] == "end":
                c.finish_reason, c.tool_calls, c.tokens = e["finish_reason"], e["tool_calls"], e["completion_tokens"]
        body: dict[str, Any] = {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                                "choices": [self._choice(i, choices[i]) for i in sorted(choices)],
                                "usage": self.usage(choices), "system_fingerprint": None}
        if self.kind == "chat":
            body["prompt"] = []  # Together's field (the prompt only with echo, which is refused)
        return body

    def _choice(self, index: int, c: ChoiceState) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "finish_reason": c.finish_reason,
                                  "logprobs": self._logprobs(c.entries) if c.entries else None}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": c.content if c.content or not c.tool_calls
                                       else None}
            if c.reasoning:
                message["reasoning"] = c.reasoning
            if c.tool_calls:
                message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in c.tool_calls]
            choice["message"] = message
        else:
            choice["text"] = c.content
        return choice

    def _logprobs(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        if self.logprobs == "openai":
            return {"content": [_openai_entry(e) for e in entries], "refusal": None}
        out: dict[str, Any] = {"tokens": [e["token"] for e in entries], "token_ids": [e["token_id"] for e in entries],
                               "token_logprobs": [e["logprob"] for e in entries],
                               "top_logprobs": [{t: lp for t, lp in e["top_logprobs"]} for e in entries]}
        if self.logprobs == "legacy":
            offsets, at = [], 0
            for e in entries:
                offsets.append(at)
                at += len(e["token"])
            out["text_offset"] = offsets
        return out

    # -- server-sent events -----------------------------------------------------------------------

    async def chunks(self, events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
        choices: dict[int, ChoiceState] = {}
        last_finish: dict[str, Any] | None = None
        async for e in events:
            if e["type"] == "error":
                yield _sse({"error": {"message": e["message"], "type": "server_error", "param": None, "code": None}})
                return
            if e["type"] == "start":
                self.prompt_tokens = e["prompt_tokens"]
                continue
            first = e["index"] not in choices
            c = choices.setdefault(e["index"], ChoiceState())
            if first and self.kind == "chat":
                yield _sse(self._chunk(e["index"], {"content": ""}))
            delta = {k: e[k] for k in ("content", "reasoning") if e.get(k)}
            if e["type"] == "token" and (delta or "logprob" in e):
                chunk = self._chunk(e["index"], delta)
                if "logprob" in e:
                    chunk["choices"][0].update(self._logprobs_chunk(e))
                yield _sse(chunk)
                continue
            if e["type"] != "end":
                continue
            if delta:
                yield _sse(self._chunk(e["index"], delta))
            if e["tool_calls"]:
                yield _sse(self._chunk(e["index"], {"tool_calls": e["tool_calls"]}))
            c.tokens, c.finish_reason = e["completion_tokens"], e["finish_reason"]
            if last_finish is not None:
                yield _sse(last_finish)
            last_finish = self._chunk(e["index"], {}, finish_reason=e["finish_reason"])
        if last_finish is not None:
            if not self.include_usage:
                last_finish["usage"] = self.usage(choices)  # Together's place for it
            yield _sse(last_finish)
        if self.include_usage:
            yield _sse({**self._envelope(), "choices": [], "usage": self.usage(choices)})
        yield "data: [DONE]\n\n"

    def _envelope(self) -> dict[str, Any]:
        return {"id": self.id, "object": f"{self.object}.chunk" if self.kind == "chat" else self.object,
                "created": self.created, "model": self.model, "system_fingerprint": None}

    def _chunk(self, index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "finish_reason": finish_reason, "logprobs": None}
        if self.kind == "chat":
            choice["delta"] = {"role": "assistant", **delta}
        else:
            choice["text"] = delta.get("content", "")
        return {**self._envelope(), "choices": [choice], "usage": None}

    def _logprobs_chunk(self, e: dict[str, Any]) -> dict[str, Any]:
        """The logprob fields of one token's chunk choice, in the request's dialect."""
        if self.logprobs == "openai":
            return {"logprobs": {"content": [_openai_entry(e)], "refusal": None}}
        if self.logprobs == "together":  # Together's chunk: the token's logprob and a {token: logprob} map
            return {"logprobs": e["logprob"], "top_logprobs": {t: lp for t, lp in e["top_logprobs"]}}
        return {"logprobs": self._logprobs([e])}


def _openai_entry(e: dict[str, Any]) -> dict[str, Any]:
    return {"token": e["token"], "logprob": e["logprob"], "bytes": list(e["token"].encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in e["top_logprobs"]]}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
