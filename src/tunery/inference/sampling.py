"""Choosing the next token for every row of a batch at once, each row with its own settings.

The order is the usual one (transformers, vLLM): penalties and logit bias on the raw logits, then
greedy rows take the argmax, and sampling rows are tempered, cut by top-k, top-p and min-p and drawn
with the row's own random generator, so a seeded request draws the same tokens whatever else is in
the batch. Reported log-probabilities are those of the raw model distribution.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How one request generates. ``temperature == 0`` is greedy decoding."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no cut
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # transformers' rule, over prompt and output tokens
    presence_penalty: float = 0.0  # OpenAI's rules, over output tokens
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    n: int = 1  # choices generated from the one prompt
    stop: tuple[str, ...] = ()  # stop strings (needs a tokenizer); the text ends before them
    stop_token_ids: tuple[int, ...] = ()  # besides the model's end-of-sequence tokens
    ignore_eos: bool = False  # keep going past end-of-sequence tokens (benchmarks)
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: also the k most likely

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be at least 1; got {self.max_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0; got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1]; got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0; got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            problems.append(f"min_p must be in [0, 1]; got {self.min_p}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0; got {self.repetition_penalty}")
        if self.n < 1:
            problems.append(f"n must be at least 1; got {self.n}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            problems.append(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]; got {self.logprobs}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0


@dataclass
class RowSampler:
    """One sequence's sampling state: its settings, its random generator and its token history."""

    params: SamplingParams
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator()
        self.generator.manual_seed(self.params.seed if self.params.seed is not None else random.getrandbits(63))


@dataclass(frozen=True)
class Choice:
    token_id: int
    logprob: float | None  # None unless the row asked for logprobs
    top_logprobs: list[tuple[int, float]] | None


def choose(logits: torch.Tensor, rows: Sequence[RowSampler]) -> list[Choice]:
    """The next token of each row, from ``logits`` ``[B, V]`` (one row per sampler)."""
    logits = logits.float()
    wants_logprobs = [r.params.logprobs is not None for r in rows]
    raw = torch.log_softmax(logits, dim=-1) if any(wants_logprobs) else None
    logits = _penalise(logits, rows)
    tokens = torch.empty(len(rows), dtype=torch.long)
    greedy = [i for i, r in enumerate(rows) if r.params.greedy]
    if greedy:
        tokens[greedy] = logits[greedy].argmax(dim=-1)
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if sampled:
        tokens[sampled] = _sample(logits[sampled], [rows[i] for i in sampled])
    choices = []
    for i, row in enumerate(rows):
        token = int(tokens[i])
        if raw is None or not wants_logprobs[i]:
            choices.append(Choice(token, None, None))
            continue
        k = row.params.logprobs or 0
        top = None
        if k:
            values, ids = raw[i].topk(k)
            top = [(int(t), float(v)) for t, v in zip(ids, values, strict=True)]
        choices.append(Choice(token, float(raw[i, token]), top))
    return choices


def _penalise(logits: torch.Tensor, rows: Sequence[RowSampler]) -> torch.Tensor:
    touched = [i for i, r in enumerate(rows) if r.params.penalised or r.params.logit_bias]
    if not touched:
        return logits
    logits = logits.clone()
    for i in touched:
        p = rows[i].params
        if p.repetition_penalty != 1:
            seen = torch.tensor(sorted(set(rows[i].prompt_ids) | set(rows[i].output_ids)), dtype=torch.long)
            scores = logits[i, seen]
            logits[i, seen] = torch.where(scores < 0, scores * p.repetition_penalty, scores / p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and rows[i].output_ids:
            counts = torch.bincount(torch.tensor(rows[i].output_ids), minlength=logits.shape[1]).float()
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
        for token, bias in p.logit_bias:
            if 0 <= token < logits.shape[1]:
                logits[i, token] += bias
    return logits


def _sample(logits: torch.Tensor, rows: Sequence[RowSampler]) -> torch.Tensor:
    temperature = torch.tensor([r.params.temperature for r in rows]).unsqueeze(1)
    logits = logits / temperature
    ordered, order = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[1]
    rank = torch.arange(vocab).unsqueeze(0)
    top_k = torch.tensor([r.params.top_k or vocab for r in rows]).unsqueeze(1)
    drop = rank >= top_k
    probs = torch.softmax(ordered.masked_fill(drop, float("-inf")), dim=-1)
    top_p = torch.tensor([r.params.top_p for r in rows]).unsqueeze(1)
    # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it already does.
    drop |= (probs.cumsum(dim=-1) - probs) >= top_p
    min_p = torch.tensor([r.params.min_p for r in rows]).unsqueeze(1)
    drop |= probs < min_p * probs[:, :1]
    probs = torch.softmax(ordered.masked_fill(drop, float("-inf")), dim=-1)
    picks = torch.empty(len(rows), dtype=torch.long)
    for i, row in enumerate(rows):
        # The exponential race: argmax(p / E) with E ~ Exp(1) draws from p, with this row's generator.
        noise = torch.empty(vocab).exponential_(generator=row.generator)
        picks[i] = order[i, int((probs[i] / noise).argmax())]
    return picks
