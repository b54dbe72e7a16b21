"""The optional vLLM backend for GPU hosts: ``pip install 'tunery[vllm]'`` and ``TUNERY_INFERENCE_ENGINE=vllm``.

NOT RUN in tunery's own tests or benchmarks: the machines it was written on have neither a GPU nor vLLM. It
is built on vLLM's documented engine API (``AsyncLLMEngine.from_engine_args``, ``engine.generate`` with a
``LoRARequest`` per adapter) and shares everything else with the transformers engine: the same request
checks and chat rendering (``engine.check``), the same events, the same tool-call and reasoning parsing.

vLLM serves one base model per engine, with many LoRA adapters over it (``enable_lora``; vLLM keeps
``max_loras`` on the GPU and ``max_cpu_loras`` in host memory, least recently used first). So this backend
holds one vLLM engine at a time, for the base model (or full fine-tune) the requests name; a request for a
different model waits until the running ones finish, then the engine is swapped.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunery.errors import InvalidRequest
from tunery.inference.engine import Checked, Event, check, end_event, token_event
from tunery.inference.images import has_images
from tunery.inference.pool import generation_defaults
from tunery.inference.protocol import GenerateRequest, ModelRef
from tunery.inference.scheduler import Request, TokenEvent
from tunery.settings import Settings

MAX_LORA_RANK = 64  # the largest rank tunery trains (tunery.models.limits.MAX_LORA_RANK)


@dataclass
class _Loaded:
    model_dir: Path
    engine: Any  # vllm.AsyncLLMEngine
    tokenizer: Any
    context: int
    vocab: int
    running: int = 0
    adapters: dict[str, int] = field(default_factory=dict)  # blob key → vLLM's integer LoRA id


class VllmEngine:
    name = "vllm"

    def __init__(self, settings: Settings, fetch: Callable[[str], Path], locate_base: Callable[[ModelRef], Path]):
        self.settings = settings
        self.fetch = fetch
        self.locate_base = locate_base
        self.loaded: _Loaded | None = None
        self._swap = asyncio.Lock()
        self._idle = asyncio.Condition()

    async def open(self, request: GenerateRequest) -> AsyncIterator[Event]:
        if request.messages is not None and has_images(request.messages):
            raise InvalidRequest("this server's vLLM engine takes text only; chat with images through the "
                                 "transformers engine (TUNERY_INFERENCE_ENGINE=transformers)", param="messages")
        model_dir = await asyncio.to_thread(self._model_dir, request.model)
        loaded = await self._engine_for(model_dir)
        loaded.running += 1
        try:
            lora = await asyncio.to_thread(self._lora, loaded, request.model)
            checked = check(request, loaded.tokenizer, loaded.vocab, loaded.context,
                            generation_defaults(loaded.model_dir), self.settings.inference_max_tokens)
        except BaseException:
            await self._done(loaded)
            raise
        return self._stream(loaded, request, checked, lora)

    def _model_dir(self, ref: ModelRef) -> Path:
        return self.fetch(ref.weights_key) if ref.weights_key else self.locate_base(ref)

    async def _engine_for(self, model_dir: Path) -> _Loaded:
        async with self._swap:
            if self.loaded is not None and self.loaded.model_dir == model_dir:
                return self.loaded
            async with self._idle:
                await self._idle.wait_for(lambda: self.loaded is None or self.loaded.running == 0)
            if self.loaded is not None:
                self.loaded.engine.shutdown()
                self.loaded = None
            self.loaded = await asyncio.to_thread(self._start, model_dir)
            return self.loaded

    def _start(self, model_dir: Path) -> _Loaded:
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        from tunery.training.model import load_tokenizer

        args = AsyncEngineArgs(model=str(model_dir), dtype=self.settings.inference_dtype, enable_lora=True,
                               max_lora_rank=MAX_LORA_RANK, max_num_seqs=self.settings.inference_max_batch_size,
                               gpu_memory_utilization=0.85)
        engine = AsyncLLMEngine.from_engine_args(args)
        tokenizer = load_tokenizer(model_dir)
        config = engine.engine.model_config if hasattr(engine, "engine") else None
        context = int(getattr(config, "max_model_len", 0) or tokenizer.model_max_length)
        return _Loaded(model_dir, engine, tokenizer, context, len(tokenizer))

    def _lora(self, loaded: _Loaded, ref: ModelRef) -> Any:
        if not ref.adapter_key:
            return None
        from vllm.lora.request import LoRARequest

        lora_id = loaded.adapters.setdefault(ref.adapter_key, len(loaded.adapters) + 1)
        name = "a" + hashlib.sha256(ref.adapter_key.encode()).hexdigest()[:16]
        return LoRARequest(name, lora_id, str(self.fetch(ref.adapter_key)))

    async def _done(self, loaded: _Loaded) -> None:
        async with self._idle:
            loaded.running -= 1
            self._idle.notify_all()

    async def _stream(self, loaded: _Loaded, request: GenerateRequest, checked: Checked,
                      lora: Any) -> AsyncIterator[Event]:
        from vllm import SamplingParams

        p = checked.params
        params = SamplingParams(n=p.n, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k or -1, min_p=p.min_p,
                                repetition_penalty=p.repetition_penalty, presence_penalty=p.presence_penalty,
                                frequency_penalty=p.frequency_penalty, seed=p.seed, stop=list(p.stop),
                                ignore_eos=p.ignore_eos, max_tokens=p.max_tokens, logprobs=p.logprobs,
                                logit_bias=dict(p.logit_bias) or None)
        ours = Request(checked.prompt_ids, p)
        seen = [0] * p.n
        texts = [""] * p.n
        request_id = uuid.uuid4().hex
        finished = 0
        try:
            yield {"type": "start", "prompt_tokens": len(checked.prompt_ids)}
            async for out in loaded.engine.generate({"prompt_token_ids": checked.prompt_ids}, params, request_id,
                                                    lora_request=lora):
                for completion in out.outputs:
                    i = completion.index
                    new_tokens = completion.token_ids[seen[i]:]
                    delta, texts[i] = completion.text[len(texts[i]):], completion.text
                    for k, token in enumerate(new_tokens):
                        last = k == len(new_tokens) - 1
                        logprob, top = _logprobs(completion.logprobs, seen[i] + k, int(token), p.logprobs)
                        finish = completion.finish_reason if last and completion.finish_reason else None
                        event = TokenEvent(ours, i, int(token), delta if last else "", logprob, top,
                                           "stop" if finish == "stop" else "length" if finish else None)
                        yield token_event(event, checked.parsers[i], loaded.tokenizer)
                        if event.finish_reason is not None:
                            finished += 1
                            yield end_event(event, checked.parsers[i], len(completion.token_ids))
                    seen[i] = len(completion.token_ids)
        finally:
            if finished < p.n:  # the client went away: stop generating for it
                await loaded.engine.abort(request_id)
            await self._done(loaded)

    def status(self) -> dict[str, Any]:
        return {"engine": self.name, "model": str(self.loaded.model_dir) if self.loaded else None}

    def close(self) -> None:
        if self.loaded is not None:
            self.loaded.engine.shutdown()


def _logprobs(per_token: Any, position: int, token: int,
              k: int | None) -> tuple[float | None, list[tuple[int, float]] | None]:
    """The chosen token's log-probability and the ``k`` most likely, from vLLM's per-position dict
    (token id → Logprob: the top ``k`` plus the sampled token)."""
    if k is None or not per_token or position >= len(per_token):
        return None, None
    entries = per_token[position]
    ranked = sorted(entries.items(), key=lambda kv: -kv[1].logprob)[:k]
    return float(entries[token].logprob), [(int(t), float(v.logprob)) for t, v in ranked]
