"""The engine: generation requests in, event streams out, over every model the pool keeps warm.

``open`` does everything that can refuse a request before its stream starts: the per-user cap (a
caller over it waits its turn), loading the model (a cold start is a wait), rendering the chat, and the
length checks. The stream then yields the events described in ``protocol.py``. One stepping thread
runs every loaded model's ``Scheduler`` in turn, holding that model's lock for the step.

``Backend`` is what the engine process serves; ``TransformersEngine`` is the CPU/GPU ``transformers``
one, ``tunery.inference.vllm_engine.VllmEngine`` the optional vLLM one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from jinja2 import TemplateError

from tunery.errors import InvalidRequest, TuneryError
from tunery.inference.chat import OutputParser, render_chat, template_text
from tunery.inference.images import VisionChat, VisionPrompt, has_images
from tunery.inference.pool import Lease, ModelPool
from tunery.inference.protocol import GenerateRequest
from tunery.inference.sampling import SamplingParams
from tunery.inference.scheduler import Request, TokenEvent

log = logging.getLogger("tunery.inference")

Event = dict[str, Any]


class Overloaded(TuneryError):
    """The inference engine has too many requests waiting; retry shortly."""

    status_code = 503
    error_type = "server_error"


class Backend(Protocol):
    name: str

    async def open(self, request: GenerateRequest) -> AsyncIterator[Event]:
        """Check and start ``request``; raises ``TuneryError`` before any event when it cannot start."""
        ...

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass
class Limits:
    max_tokens: int  # the most tokens one request may ask for
    per_user: int  # generations one user runs at once; more wait
    max_pending: int  # requests the engine holds (running or waiting) before it answers 503


@dataclass
class Checked:
    """A request checked against its model: the prompt's tokens, the sampling settings, and a parser
    per choice for chat answers (None for plain completions)."""

    prompt_ids: list[int]
    params: SamplingParams
    prompt_text: str
    parsers: list[OutputParser | None]
    vision: VisionPrompt | None = None  # a vision-language model's rendering (its image inputs)


@dataclass
class Prepared:
    """A checked request in scheduler terms."""

    request: Request
    prompt_text: str
    parsers: list[OutputParser | None]


class TransformersEngine:
    name = "transformers"

    def __init__(self, pool: ModelPool, limits: Limits):
        self.pool = pool
        self.limits = limits
        self._sinks: dict[int, Callable[[TokenEvent | BaseException], None]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._pending = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference-steps", daemon=True)
        self._thread.start()

    # -- requests (the event loop) -----------------------------------------------------------------

    async def open(self, request: GenerateRequest) -> AsyncIterator[Event]:
        if self._pending >= self.limits.max_pending:
            raise Overloaded()
        self._pending += 1
        slot = self._slots.setdefault(request.user, asyncio.Semaphore(self.limits.per_user))
        lease: Lease | None = None
        try:
            await slot.acquire()
            try:
                lease = await asyncio.to_thread(self.pool.lease, request.model)
                prepared = self.prepare(request, lease)
            except BaseException:
                slot.release()
                raise
        except BaseException:
            if lease is not None:
                self.pool.release(lease)
            self._pending -= 1
            raise
        return self._stream(prepared, lease, slot)

    def prepare(self, req: GenerateRequest, lease: Lease) -> Prepared:
        checked = check(req, lease.tokenizer, lease.entry.model.get_input_embeddings().num_embeddings,
                        lease.entry.scheduler.context_length, lease.entry.defaults, self.limits.max_tokens,
                        lease.entry.vision)
        request = Request(checked.prompt_ids, checked.params, adapter=lease.adapter)
        if checked.vision is not None:
            request.inputs, request.positions = checked.vision.inputs, checked.vision.positions
        return Prepared(request, checked.prompt_text, checked.parsers)

    async def _stream(self, prepared: Prepared, lease: Lease, slot: asyncio.Semaphore) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenEvent | BaseException] = asyncio.Queue()
        request, tokenizer = prepared.request, lease.tokenizer

        def sink(event: TokenEvent | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        self._sinks[request.id] = sink
        counts = [0] * request.params.n
        ended = 0
        try:
            lease.entry.scheduler.add(request)
            self._wake.set()
            yield {"type": "start", "prompt_tokens": len(request.prompt_ids)}
            while ended < request.params.n:
                event = await queue.get()
                if isinstance(event, BaseException):
                    yield {"type": "error", "message": f"generation failed: {event}"}
                    return
                counts[event.index] += 1
                yield token_event(event, prepared.parsers[event.index], tokenizer)
                if event.finish_reason is not None:
                    ended += 1
                    yield end_event(event, prepared.parsers[event.index], counts[event.index])
        finally:
            if ended < request.params.n:
                lease.entry.scheduler.cancel(request)
            self._sinks.pop(request.id, None)
            self.pool.release(lease)
            slot.release()
            self._pending -= 1

    # -- the stepping thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            worked = False
            for entry in self.pool.models():
                if not entry.scheduler.has_work():
                    continue
                worked = True
                try:
                    with entry.lock:
                        events = entry.scheduler.step()
                except Exception as exc:  # a broken step must not take the other requests or models down
                    log.exception("inference step failed on %s", entry.key)
                    for r in entry.scheduler.abort():
                        self._deliver(r.id, exc)
                    continue
                for e in events:
                    self._deliver(e.request.id, e)
            if not worked:
                self._wake.wait(0.05)
                self._wake.clear()

    def _deliver(self, request_id: int, event: TokenEvent | BaseException) -> None:
        sink = self._sinks.get(request_id)
        if sink is not None:
            sink(event)

    def status(self) -> dict[str, Any]:
        return {"engine": self.name, "pending": self._pending, "models": self.pool.loaded()}

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()


# -- checking a request against its model (every backend) -----------------------------------------

def check(req: GenerateRequest, tokenizer: Any, vocab: int, context: int, defaults: dict[str, Any],
          max_tokens_cap: int, vision: VisionChat | None = None) -> Checked:
    """Render or tokenize the prompt and settle the sampling settings; InvalidRequest when the request
    does not fit the model (naming the field). A vision-language model's conversations render with its
    processor (``vision``), images and all; images for a text model are refused."""
    prompt_text, param, rendered = "", "prompt", None
    if req.messages is not None:
        param = "messages"
        if vision is None and has_images(req.messages):
            raise InvalidRequest("this model is a text model and takes no images: send image_url parts only to a "
                                 "vision-language model (supports_vision in /v1/fine-tunes/models/limits)",
                                 param="messages")
        try:
            if vision is not None:
                rendered = vision.render(req.messages, req.tools, req.chat_template_kwargs)
                prompt_text, ids = rendered.text, rendered.ids
            else:
                prompt_text, ids = render_chat(tokenizer, req.messages, req.tools, req.chat_template_kwargs)
        except (TemplateError, TypeError, ValueError, KeyError) as e:
            raise InvalidRequest(f"the model's chat template cannot render these messages: {e}",
                                 param="messages") from None
    elif isinstance(req.prompt, str):
        prompt_text, ids = req.prompt, list(tokenizer(req.prompt)["input_ids"])
    else:
        ids = list(req.prompt or [])
        if any(not 0 <= t < vocab for t in ids):
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab})", param="prompt")
    if not ids:
        raise InvalidRequest("the prompt is empty", param=param)
    if len(ids) >= context:
        raise InvalidRequest(f"the prompt is {len(ids)} tokens; this model's context holds {context} tokens, "
                             "prompt and output together", param=param, code="context_length_exceeded")
    max_tokens = _max_tokens(req, len(ids), context, max_tokens_cap)
    try:
        params = _sampling(req, defaults, max_tokens)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    template = template_text(tokenizer)
    parsers: list[OutputParser | None] = [
        OutputParser(template, tools=bool(req.tools), prompt_text=prompt_text) if req.messages is not None
        else None for _ in range(params.n)]
    return Checked(ids, params, prompt_text, parsers, rendered)


def _max_tokens(req: GenerateRequest, prompt: int, context: int, cap: int) -> int:
    room = context - prompt
    if req.max_tokens is None:
        return max(1, min(room, cap))
    if req.max_tokens > cap:
        raise InvalidRequest(f"max_tokens is {req.max_tokens}; this server allows at most {cap} "
                             "(TUNERY_INFERENCE_MAX_TOKENS)", param="max_tokens")
    if req.max_tokens > room:
        if req.context_length_exceeded_behavior == "truncate":
            return room
        raise InvalidRequest(f"the prompt is {prompt} tokens and max_tokens is {req.max_tokens}: "
                             f"{prompt + req.max_tokens} in all, over this model's context of {context} tokens; "
                             "lower max_tokens", param="max_tokens", code="context_length_exceeded")
    return req.max_tokens


def _sampling(req: GenerateRequest, defaults: dict[str, Any], max_tokens: int) -> SamplingParams:
    s = req.sampling

    def pick(name: str, fallback: Any) -> Any:
        value = getattr(s, name)
        return value if value is not None else defaults.get(name, fallback)

    return SamplingParams(
        max_tokens=max_tokens, temperature=float(pick("temperature", 1.0)), top_p=float(pick("top_p", 1.0)),
        top_k=int(pick("top_k", 0)), min_p=float(pick("min_p", 0.0)),
        repetition_penalty=float(pick("repetition_penalty", 1.0)), presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty, logit_bias=tuple(s.logit_bias.items()), seed=s.seed, n=s.n,
        stop=tuple(s.stop), ignore_eos=s.ignore_eos, logprobs=s.logprobs)


def token_event(event: TokenEvent, parser: OutputParser | None, tokenizer: Any) -> Event:
    reasoning, content = parser.feed(event.text) if parser is not None else ("", event.text)
    out: Event = {"type": "token", "index": event.index, "token_id": event.token_id, "content": content,
                  "reasoning": reasoning}
    if event.logprob is not None:
        out["token"] = tokenizer.decode([event.token_id])
        out["logprob"] = event.logprob
        out["top_logprobs"] = [[tokenizer.decode([t]), lp] for t, lp in event.top_logprobs or []]
    return out


def end_event(event: TokenEvent, parser: OutputParser | None, completion_tokens: int) -> Event:
    out: Event = {"type": "end", "index": event.index, "finish_reason": event.finish_reason,
                  "completion_tokens": completion_tokens, "content": "", "reasoning": "", "tool_calls": None}
    if parser is not None:
        parsed = parser.finish()
        out.update(content=parsed.content_tail, reasoning=parsed.reasoning_tail, tool_calls=parsed.tool_calls)
        if parsed.tool_calls:
            out["finish_reason"] = "tool_calls"
    return out
