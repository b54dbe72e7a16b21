"""Continuous batching over one model object: the core of inference, usable in any process.

    from tunery.inference.sampling import SamplingParams
    from tunery.inference.scheduler import generate

    # In a training child (RL): sample with the policy's current weights, no server involved.
    groups = generate(policy_model, [prompt_ids_1, prompt_ids_2], SamplingParams(max_tokens=64, n=4),
                      tokenizer=tokenizer)
    groups[0][3].token_ids, groups[0][3].text, groups[0][3].logprobs

``Scheduler`` is the loop behind it. ``add`` queues a request (any thread); each ``step`` (one thread)
first admits waiting requests while the batch has room (rows and KV tokens) and prefills them together,
sampling their first tokens, then runs one decode step over every running row, so requests join and
leave the batch between steps. Each step returns one ``TokenEvent`` per generated token; a finished
sequence's last event carries its ``finish_reason``.

The model is any ``transformers`` causal LM, or a ``peft`` model. Rows of a peft model that hosts
several adapters name theirs in ``Request.adapter`` (``"__base__"`` for none), and the forward pass gets
``adapter_names``; when no row names one, the model runs as it is (e.g. a policy with its one adapter
active). ``generate`` puts the model in eval mode for its duration and restores the mode after.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from tunery.inference.batch import DecodeBatch, mergeable
from tunery.inference.detokenize import TextStream
from tunery.inference.sampling import Choice, RowSampler, SamplingParams, choose

FinishReason = Literal["stop", "length"]
_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """One generation request: ``params.n`` sequences continuing ``prompt_ids``."""

    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None
    # A vision-language model's image inputs for the prefill's forward pass (``pixel_values``, …), and the
    # prompt's positions where they are not 0..n-1 (``[axes, n]``, three-axis M-RoPE). Such a request
    # prefills alone (its inputs are its own), then decodes in the running batch like any other.
    inputs: dict[str, Any] = field(default_factory=dict)
    positions: torch.Tensor | None = None
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def prefills_alone(self) -> bool:
        return bool(self.inputs) or self.positions is not None


@dataclass(frozen=True)
class TokenEvent:
    request: Request
    index: int  # which of the request's ``n`` sequences
    token_id: int
    text: str  # text this token released ("" without a tokenizer, or while held back)
    logprob: float | None
    top_logprobs: list[tuple[int, float]] | None
    finish_reason: FinishReason | None  # set on the sequence's last event


@dataclass(eq=False)
class _Sequence:
    request: Request
    index: int
    sampler: RowSampler
    text: TextStream | None
    last: int = -1  # the newest token, not yet in the KV cache
    finished: bool = False


class Scheduler:
    def __init__(self, model: Any, tokenizer: Any = None, *, eos_token_ids: Sequence[int] = (),
                 max_batch_size: int = 32, max_batch_tokens: int = 65536, max_prefill_tokens: int = 4096,
                 context_length: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.eos = frozenset(eos_token_ids) or default_eos_token_ids(model, tokenizer)
        # Rows of models with special cache layers cannot join a running batch: one prefill group at a time.
        self.mergeable = mergeable(model)
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.context_length = context_length or context_length_of(model)
        self.waiting: deque[Request] = deque()
        self.running: list[_Sequence] = []
        self.batch: DecodeBatch | None = None
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._base_adapter: str | None = None
        self._admitting: list[Request] = []  # taken from the queue, not yet running (for abort)

    def use_adapters(self, on: bool = True) -> None:
        """With ``on``, every row names its adapter and rows without one run the plain base
        (``__base__``): for a model that has become a peft model hosting several adapters. Off again
        when it is a plain model once more."""
        self._base_adapter = "__base__" if on else None

    # -- from any thread ---------------------------------------------------------------------------

    def add(self, request: Request) -> None:
        if not request.prompt_ids:
            raise ValueError("the prompt must hold at least one token")
        if len(request.prompt_ids) >= self.context_length:
            raise ValueError(f"the prompt is {len(request.prompt_ids)} tokens; the model's context is "
                             f"{self.context_length}")
        if request.params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        with self._lock:
            self.waiting.append(request)

    def cancel(self, request: Request) -> None:
        """Stop generating for ``request``; it leaves the batch at the next step, without more events."""
        with self._lock:
            self._cancelled.add(request.id)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def abort(self) -> list[Request]:
        """Drop everything (after a failed step); returns the requests that were waiting or running."""
        with self._lock:
            dropped = list(self.waiting)
            self.waiting.clear()
        dropped += self._admitting + list({id(s.request): s.request for s in self.running}.values())
        self.running, self.batch, self._admitting = [], None, []
        return dropped

    # -- the stepping thread -----------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        self._drop_cancelled()
        events = self._admit()
        if self.running:
            assert self.batch is not None
            tokens = torch.tensor([s.last for s in self.running], dtype=torch.long)
            logits = self.batch.decode(self.model, tokens, **self._adapter_args([s.request for s in self.running]))
            events += self._advance(self.running, choose(logits, [s.sampler for s in self.running]))
            self._retire()
        return events

    def _adapter_args(self, requests: Sequence[Request]) -> dict[str, Any]:
        """The forward pass's ``adapter_names`` when rows name adapters; else nothing."""
        if self._base_adapter is None and all(r.adapter is None for r in requests):
            return {}
        return {"adapter_names": [r.adapter or self._base_adapter or "__base__" for r in requests]}

    def _drop_cancelled(self) -> None:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            if cancelled:
                self.waiting = deque(r for r in self.waiting if r.id not in cancelled)
        if cancelled and any(s.request.id in cancelled for s in self.running):
            self._retire(cancelled)

    def _admit(self) -> list[TokenEvent]:
        admitted = self._take_admissible()
        if not admitted:
            return []
        self._admitting = admitted
        first = admitted[0]  # the only one when it has inputs of its own (``prefills_alone``)
        prefill, logits = DecodeBatch.prefill(self.model, [r.prompt_ids for r in admitted], positions=first.positions,
                                              **first.inputs, **self._adapter_args(admitted))
        rows = [row for row, r in enumerate(admitted) for _ in range(r.params.n)]
        if len(rows) != len(admitted):
            prefill.repeat(rows)
            logits = logits.index_select(0, torch.tensor(rows, device=logits.device))
        seqs = [self._sequence(r, i) for r in admitted for i in range(r.params.n)]
        events = self._advance(seqs, choose(logits, [s.sampler for s in seqs]))
        if self.batch is None:
            self.batch = prefill
        else:
            self.batch.extend(prefill)
        self.running += seqs
        self._admitting = []
        self._retire()  # sequences that ended at their first token
        return events

    def _take_admissible(self) -> list[Request]:
        """Waiting requests, oldest first, while the batch has rows, KV tokens and prefill budget for
        them; the first one always goes in when nothing runs, whatever its size."""
        if self.running and not self.mergeable:
            return []
        taken: list[Request] = []
        rows = len(self.running)
        kv = sum(len(s.sampler.prompt_ids) + s.request.params.max_tokens for s in self.running)
        prefill = 0
        with self._lock:
            while self.waiting:
                r = self.waiting[0]
                if taken and r.prefills_alone:
                    break
                need = r.params.n * (len(r.prompt_ids) + r.params.max_tokens)
                if rows and (rows + r.params.n > self.max_batch_size or kv + need > self.max_batch_tokens
                             or prefill + len(r.prompt_ids) > self.max_prefill_tokens):
                    break
                taken.append(self.waiting.popleft())
                rows, kv, prefill = rows + r.params.n, kv + need, prefill + len(r.prompt_ids)
                if not self.mergeable or r.prefills_alone:
                    break
        return taken

    def _sequence(self, request: Request, index: int) -> _Sequence:
        params = request.params
        if params.seed is not None and index:
            params = replace(params, seed=params.seed + index)  # each of n choices draws its own tokens
        text = TextStream(self.tokenizer, request.params.stop) if self.tokenizer is not None else None
        return _Sequence(request, index, RowSampler(params, request.prompt_ids), text)

    def _advance(self, seqs: Sequence[_Sequence], choices: Sequence[Choice]) -> list[TokenEvent]:
        events = []
        for seq, choice in zip(seqs, choices, strict=True):
            token, params = choice.token_id, seq.request.params
            seq.sampler.output_ids.append(token)
            seq.last = token
            reason: FinishReason | None = None
            ends_sequence = (token in self.eos and not params.ignore_eos) or token in params.stop_token_ids
            text = ""
            if seq.text is not None and not ends_sequence:
                text = seq.text.push(token)
            if ends_sequence or (seq.text is not None and seq.text.stopped):
                reason = "stop"
            elif (len(seq.sampler.output_ids) >= params.max_tokens
                  or len(seq.sampler.prompt_ids) + len(seq.sampler.output_ids) >= self.context_length):
                reason = "length"
            if reason is not None and seq.text is not None:
                text += seq.text.flush()
            events.append(TokenEvent(seq.request, seq.index, token, text, choice.logprob, choice.top_logprobs, reason))
            seq.finished = reason is not None
        return events

    def _retire(self, cancelled: set[int] | None = None) -> None:
        keep = [i for i, s in enumerate(self.running)
                if not s.finished and not (cancelled and s.request.id in cancelled)]
        if len(keep) == len(self.running):
            return
        self.running = [self.running[i] for i in keep]
        if not keep:
            self.batch = None
        elif self.batch is not None:
            self.batch.keep(keep, trim=self.mergeable)


# -- model facts ----------------------------------------------------------------------------------

def default_eos_token_ids(model: Any, tokenizer: Any = None) -> frozenset[int]:
    """End-of-sequence tokens: the generation config's (what ``generate`` stops at), the model
    config's, and the tokenizer's."""
    ids: set[int] = set()
    sources = [getattr(getattr(model, "generation_config", None), "eos_token_id", None),
               getattr(model.config, "eos_token_id", None),
               getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None]
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def context_length_of(model: Any) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(config, "max_position_embeddings", 0) or 2048)


# -- in-process convenience -----------------------------------------------------------------------

@dataclass(frozen=True)
class Generation:
    token_ids: list[int]  # generated tokens, the end-of-sequence token included when there was one
    text: str | None  # None without a tokenizer
    finish_reason: FinishReason
    logprobs: list[float] | None  # of each generated token, when params.logprobs is not None


def generate(model: Any, prompts: Sequence[list[int]], params: SamplingParams | Sequence[SamplingParams], *,
             tokenizer: Any = None, eos_token_ids: Sequence[int] = (), max_batch_size: int = 64,
             max_batch_tokens: int = 1 << 20) -> list[list[Generation]]:
    """Generate for every prompt, all batched together; returns each prompt's ``n`` generations."""
    per_prompt = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    if len(per_prompt) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(per_prompt)} sampling params")
    scheduler = Scheduler(model, tokenizer, eos_token_ids=eos_token_ids, max_batch_size=max_batch_size,
                          max_batch_tokens=max_batch_tokens)
    requests = [Request(list(p), sp) for p, sp in zip(prompts, per_prompt, strict=True)]
    for r in requests:
        scheduler.add(r)
    tokens: dict[tuple[int, int], list[int]] = {}
    texts: dict[tuple[int, int], str] = {}
    logprobs: dict[tuple[int, int], list[float]] = {}
    reasons: dict[tuple[int, int], FinishReason] = {}
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        while scheduler.has_work():
            for e in scheduler.step():
                key = (e.request.id, e.index)
                tokens.setdefault(key, []).append(e.token_id)
                texts[key] = texts.get(key, "") + e.text
                if e.logprob is not None:
                    logprobs.setdefault(key, []).append(e.logprob)
                if e.finish_reason is not None:
                    reasons[key] = e.finish_reason
    finally:
        model.train(was_training)
    return [[Generation(tokens[(r.id, i)], texts[(r.id, i)] if tokenizer is not None else None,
                        reasons[(r.id, i)], logprobs.get((r.id, i)) if r.params.logprobs is not None else None)
             for i in range(r.params.n)] for r in requests]
