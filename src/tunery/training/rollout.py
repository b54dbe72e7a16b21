"""GRPO's rollouts: sample completions with the policy's current weights, grade them, and lay them out
for the loss.

Sampling goes through the inference engine's in-process core (continuous batching over the model
object the recipe trains), so what the policy generates is what the served model would. Each prompt
gets ``group_size`` completions; each completion is graded against its prompt's dataset row; the
rewards become group-relative advantages. A completion is trained as one example: the prompt's
tokens (not trained) followed by the completion's (trained, the end-of-sequence token included when
the model produced one, so it learns when to stop).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunery.graders.grading import Grade, GraderEnv, grade_many, sample_namespace
from tunery.inference.sampling import SamplingParams
from tunery.inference.scheduler import generate
from tunery.training.data.prompts import PromptItem
from tunery.training.data.render import IGNORE, Example
from tunery.training.losses import group_advantages


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    text: str


@dataclass
class Rollout:
    examples: list[Example]  # prompt + completion; the G completions of a prompt adjacent
    grades: list[Grade]
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    sample_seconds: float
    grade_seconds: float
    old_logps: list[torch.Tensor] | None = None  # per micro-batch, when the policy moves within a rollout
    ref_logps: list[torch.Tensor] | None = None  # per micro-batch, when the KL term is on

    @property
    def completion_tokens(self) -> int:
        return sum(1 for e in self.examples for label in e.labels if label != IGNORE)


def sample(model: Any, tokenizer: Any, prompts: Sequence[list[int]], *, n: int, max_new_tokens: int,
           temperature: float, seed: int) -> list[list[Completion]]:
    """``n`` completions of every prompt, batched through the inference core; greedy at temperature 0."""
    params = [SamplingParams(max_tokens=max_new_tokens, temperature=temperature, n=n, seed=seed + 1009 * i)
              for i in range(len(prompts))]
    groups = generate(model, [list(p) for p in prompts], params, tokenizer=tokenizer)
    return [[Completion(g.token_ids, g.text or "") for g in group] for group in groups]


def roll_out(model: Any, tokenizer: Any, prompts: Sequence[PromptItem], grader: Any, env: GraderEnv, *,
             group_size: int, max_new_tokens: int, temperature: float, seed: int) -> Rollout:
    started = time.perf_counter()
    groups = sample(model, tokenizer, [p.ids for p in prompts], n=group_size, max_new_tokens=max_new_tokens,
                    temperature=temperature, seed=seed)
    sampled = time.perf_counter()
    pairs = [(sample_namespace(c.text), p.item) for p, group in zip(prompts, groups, strict=True) for c in group]
    grades = grade_many(grader, pairs, env)
    graded = time.perf_counter()
    examples = [Example(p.ids + c.token_ids, [IGNORE] * len(p.ids) + c.token_ids)
                for p, group in zip(prompts, groups, strict=True) for c in group]
    rewards = torch.tensor([g.reward for g in grades], dtype=torch.float32)
    return Rollout(examples, grades, rewards, group_advantages(rewards, group_size), sampled - started,
                   graded - sampled)


def evaluate_prompts(model: Any, tokenizer: Any, prompts: Sequence[PromptItem], grader: Any, env: GraderEnv, *,
                     samples: int, max_new_tokens: int, temperature: float, seed: int) -> list[Grade]:
    """Grades of ``samples`` completions per prompt: greedy when ``samples`` is 1, else sampled."""
    groups = sample(model, tokenizer, [p.ids for p in prompts], n=samples, max_new_tokens=max_new_tokens,
                    temperature=temperature if samples > 1 else 0.0, seed=seed)
    pairs = [(sample_namespace(c.text), p.item) for p, group in zip(prompts, groups, strict=True) for c in group]
    return grade_many(grader, pairs, env)
