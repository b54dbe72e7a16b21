"""Reinforcement fine-tuning with GRPO (group relative policy optimization): LoRA or full.

Run it:

    python -m tunery.training.recipes.grpo --config job.json --report report.jsonl

Same config, report, outputs and exit codes as ``recipes/sft.py``. The training file holds prompts
(``training/data/prompts.py``: OpenAI's reinforcement rows, ``{"messages": [...], ...fields}``) and the
config a grader (``graders/``), which scores each completion against its row; score_model graders' judge
models run in this process (``training/judge.py``).

Every ``grpo_iterations`` steps a rollout samples ``grpo_group_size`` completions for each of
``batch_size`` prompts with the policy's current weights (through the inference core, see
``training/rollout.py``) and grades them. A completion's advantage is its reward less its group's mean,
over the group's standard deviation. Each step then minimises, over every completion token of the
rollout (token-level, prompts never trained):

    -( min(ratio·A, clip(ratio, 1-ε, 1+ε)·A) - β·KL(policy ‖ reference) ),   ratio = π(t) / π_old(t)

where π_old is the policy that sampled the rollout and the reference is the model the job started
from, frozen: for LoRA with a new adapter the model with its adapter disabled, otherwise (full
fine-tuning, or an adapter continued from a parent job) a frozen copy, kept only when β > 0. Every π
is the distribution sampled from: the logits over ``grpo_temperature``. With ``grpo_iterations`` 1
the ratio is 1 in value and the clip never bites; more iterations take several steps on one rollout
and the clip keeps them near the sampling policy.

Metrics per step: reward mean/std, each grader's mean score, grader failures, KL, clip fraction,
completion length, and tokens/s of sampling and of training; ``eval/reward`` on the validation prompts
every ``eval_interval`` steps (or ``n_evals`` times), and once before the first step. Pause/resume and
a killed worker resume from the last checkpoint (``session.py``); a rollout cut in two by a resume is
sampled again with the current weights. Runs in one process (``torchrun`` is refused).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from tunery.errors import TrainingFailed
from tunery.graders.grading import Grade, GraderEnv
from tunery.graders.sandbox import SandboxLimits
from tunery.graders.schema import parse_grader
from tunery.training.attention import attention_for
from tunery.training.config import TrainConfig
from tunery.training.data.collate import collate
from tunery.training.data.prompts import PromptSet, load_prompts
from tunery.training.data.render import IGNORE, Example
from tunery.training.distributed import Dist
from tunery.training.judge import ModelJudge
from tunery.training.launch import entry_point
from tunery.training.losses import grpo_token_losses
from tunery.training.model import LoadedModel, forward_logps, is_adapter_dir, load_for_training, mask_dtype
from tunery.training.reporter import Reporter
from tunery.training.rollout import Rollout, evaluate_prompts, roll_out
from tunery.training.session import (
    Plan,
    Session,
    TrainResult,
    check_architecture,
    end_epoch_if_done,
    finish,
    make_plan,
    max_seq_length_for,
    maybe_checkpoint,
    open_run,
    optimizer_step,
    report_start,
    seed_everything,
    set_learning_rate,
    should_stop,
    start_session,
    stop,
)


@dataclass
class Rl:
    """What the loop holds beside the session: data, grader, reference model and the current rollout."""

    train: PromptSet
    val: PromptSet | None
    grader: Any
    env: GraderEnv
    reference: LoadedModel | None = None  # full fine-tuning with β > 0: the frozen starting model
    rollout: Rollout | None = None
    rollout_at: tuple[int, int] = (-1, -1)  # (epoch, rollout within it) of ``rollout``

    @property
    def grader_names(self) -> list[str]:
        return list(self.grader.graders) if self.grader.type == "multi" else [self.grader.name]


def run(cfg: TrainConfig, reporter: Reporter) -> TrainResult:
    """Train as ``cfg`` says, reporting to ``reporter``. Raises ``TrainingFailed`` for bad input."""
    with open_run(cfg, reporter) as (reporter, dist):
        return _train(*_setup(cfg, reporter, dist))


def _train(s: Session, rl: Rl) -> TrainResult:
    cfg, state = s.cfg, s.state
    report_start(s, 0)
    if state.step == 0 and rl.val is not None:
        _evaluate(s, rl)
    while state.epoch < cfg.n_epochs:
        if should_stop(s):
            return stop(s)
        values = _train_step(s, rl)
        values["train/epoch"] = state.epoch + state.step_in_epoch / s.plan.steps_per_epoch
        s.reporter.metrics(state.step, values)
        if state.step in s.plan.eval_steps:
            _evaluate(s, rl)
        end_epoch_if_done(s, s.plan.steps_per_epoch)
        maybe_checkpoint(s)
    return finish(s, early_stopped=False)


def _setup(cfg: TrainConfig, reporter: Reporter, dist: Dist) -> tuple[Session, Rl]:
    if cfg.method != "grpo":
        raise TrainingFailed(f"the GRPO recipe cannot run method {cfg.method!r}", user_error=True)
    if dist.world > 1:
        raise TrainingFailed("GRPO runs in one process; run the job with one process per job", user_error=True)
    check_architecture(cfg)
    seed_everything(cfg.seed)
    loaded = load_for_training(cfg)
    max_len = max_seq_length_for(cfg, loaded)
    room = max_len - cfg.grpo_max_new_tokens
    if room < 1:
        raise TrainingFailed(f"grpo_max_new_tokens ({cfg.grpo_max_new_tokens}) leaves no room for a prompt within "
                             f"max_seq_length {max_len}", user_error=True)
    tokenizer = loaded.tokenizer
    template_vars = {"reasoning_effort": cfg.grpo_reasoning_effort} if cfg.grpo_reasoning_effort else {}
    train = load_prompts(cfg.train_file, cfg.file_type, tokenizer, room, template_vars=template_vars)
    val = load_prompts(cfg.validation_file, cfg.file_type, tokenizer, room, "validation file", template_vars) \
        if cfg.validation_file else None
    if cfg.grpo_reasoning_effort and "reasoning_effort" not in str(tokenizer.chat_template):
        reporter.event("warning", f"reasoning_effort {cfg.grpo_reasoning_effort!r} has no effect: this model's chat "
                       "template has no reasoning_effort variable (it does not reason at a set effort)",
                       level="warning")
    for what, data in (("training", train), ("validation", val)):
        if data is not None and data.dropped:
            reporter.event("warning", f"{data.dropped} of {data.rows} {what} prompts were longer than "
                           f"{room} tokens (max_seq_length less grpo_max_new_tokens) and were skipped",
                           level="warning", dropped=data.dropped)
    plan = _plan(cfg, make_plan(cfg, loaded, dist, len(train.prompts), val is not None, max_len, max_len),
                 val is not None)
    s = start_session(cfg, reporter, loaded, plan, dist)
    limits = SandboxLimits(wall_seconds=cfg.grader_wall_seconds, cpu_seconds=cfg.grader_cpu_seconds,
                           memory_bytes=cfg.grader_memory_mb << 20)
    judge = ModelJudge(cfg.judge_model_dirs, loaded.device) if cfg.judge_model_dirs else None
    rl = Rl(train, val, parse_grader(cfg.grader),
            GraderEnv(limits=limits, judge=judge, parallelism=os.cpu_count() or 1))
    if cfg.grpo_beta > 0 and not _adapter_off_is_the_start(cfg):
        rl.reference = replace(loaded, model=_frozen_start(cfg), parallel=None)
    return s, rl


def _adapter_off_is_the_start(cfg: TrainConfig) -> bool:
    """Whether the model with its adapter disabled is the one the job started from: a LoRA job with a
    new adapter. One that continues an adapter (``init_from`` a LoRA export) started from the base
    plus that adapter, which disabling the adapter would not give."""
    return cfg.lora is not None and not (cfg.init_from is not None and is_adapter_dir(cfg.init_from))


def _plan(cfg: TrainConfig, plan: Plan, has_val: bool) -> Plan:
    """``make_plan`` counts one step per batch of prompts; each rollout here takes ``grpo_iterations``
    steps, and evals follow ``eval_interval`` when it is set (and come at the end too)."""
    steps_per_epoch = plan.steps_per_epoch * cfg.grpo_iterations
    total = steps_per_epoch * cfg.n_epochs
    evals = set() if not has_val else (set(range(cfg.eval_interval, total + 1, cfg.eval_interval)) | {total}
                                       if cfg.eval_interval else {round(e * total / plan.total_steps)
                                                                  for e in plan.eval_steps})
    checkpoints = {round(c * total / plan.total_steps) for c in plan.checkpoint_steps} - {total}
    return replace(plan, steps_per_epoch=steps_per_epoch, total_steps=total,
                   warmup=round(plan.warmup * total / plan.total_steps), eval_steps=set(evals),
                   checkpoint_steps=checkpoints)


def _frozen_start(cfg: TrainConfig) -> Any:
    """The model the job started from (its base, or what it continues from, an adapter merged into its
    base), frozen, for the KL term."""
    start = load_for_training(cfg.model_copy(update={"resume_from": None, "lora": None})).model
    start.eval()
    start.requires_grad_(False)
    return start


def _train_step(s: Session, rl: Rl) -> dict[str, float]:
    cfg = s.cfg
    at = (s.state.epoch, s.state.step_in_epoch // cfg.grpo_iterations)
    if rl.rollout is None or rl.rollout_at != at:
        rl.rollout, rl.rollout_at = _roll_out(s, rl, at[1]), at
    rollout = rl.rollout
    started = time.perf_counter()
    lr = set_learning_rate(s)
    tokens = rollout.completion_tokens
    loss_sum, kl_sum, clipped = 0.0, 0.0, 0
    for i, chunk in enumerate(_chunks(s, rollout)):
        logps, advantages = _token_logps(s.loaded, [rollout.examples[j] for j in chunk], cfg.grpo_temperature,
                                         rollout.advantages[chunk])
        old = rollout.old_logps[i] if rollout.old_logps is not None else logps.detach()
        ref = rollout.ref_logps[i] if rollout.ref_logps is not None else None
        losses, clip, kl = grpo_token_losses(logps, old, ref, advantages, epsilon=cfg.grpo_epsilon, beta=cfg.grpo_beta)
        (losses.sum() / max(tokens, 1)).backward()
        loss_sum += float(losses.detach().sum())
        kl_sum += float(kl.sum())
        clipped += int(clip.sum())
    grad_norm = optimizer_step(s, loss_sum / max(tokens, 1), tokens)
    seconds = time.perf_counter() - started
    lengths = [sum(1 for t in e.labels if t != IGNORE) for e in rollout.examples]
    return {
        "train/loss": loss_sum / max(tokens, 1),
        "train/learning_rate": lr,
        "train/grad_norm": grad_norm,
        "train/kl": kl_sum / max(tokens, 1),
        "train/clip_fraction": clipped / max(tokens, 1),
        "train/completion_length": sum(lengths) / len(lengths),
        "train/tokens_per_second": tokens / max(seconds, 1e-9),
        "train/sampling_tokens_per_second": tokens / max(rollout.sample_seconds, 1e-9),
        "train/grading_seconds": rollout.grade_seconds,
        **_reward_metrics("train", rollout.grades, rl.grader_names),
    }


def _roll_out(s: Session, rl: Rl, index: int) -> Rollout:
    cfg = s.cfg
    order = list(range(len(rl.train.prompts)))
    random.Random(cfg.seed * 7919 + s.state.epoch).shuffle(order)
    batch = [rl.train.prompts[i] for i in order[index * s.plan.batch_size : (index + 1) * s.plan.batch_size]]
    rollout = roll_out(s.loaded.model, s.loaded.tokenizer, batch, rl.grader, rl.env, group_size=cfg.grpo_group_size,
                       max_new_tokens=cfg.grpo_max_new_tokens, temperature=cfg.grpo_temperature,
                       seed=cfg.seed * 1_000_003 + s.state.step)
    with torch.no_grad():
        chunks = _chunks(s, rollout)
        if cfg.grpo_iterations > 1:
            rollout.old_logps = [_token_logps(s.loaded, [rollout.examples[j] for j in c], cfg.grpo_temperature)[0]
                                 for c in chunks]
        if cfg.grpo_beta > 0:
            rollout.ref_logps = [_reference_logps(s, rl, [rollout.examples[j] for j in c]) for c in chunks]
    return rollout


def _chunks(s: Session, rollout: Rollout) -> list[list[int]]:
    """Micro-batches of completions: the rollout split over ``gradient_accumulation_steps``."""
    n = len(rollout.examples)
    size = math.ceil(n / s.cfg.gradient_accumulation_steps)
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _token_logps(loaded: LoadedModel, examples: list[Example], temperature: float,
                 advantages: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of every completion token (in example order) under the distribution the
    rollout sampled from (the logits over ``temperature``), and each token's advantage."""
    batch = collate([[e] for e in examples], loaded.tokenizer.pad_token_id).to(loaded.device)
    trained = batch.targets != IGNORE
    logps = forward_logps(loaded, batch.input_ids, batch.position_ids, batch.targets,
                          attention_for(batch, mask_dtype(loaded)), temperature)[trained]
    if advantages is None:
        return logps, torch.empty(0)
    per_row = trained.sum(dim=1).cpu()
    return logps, torch.repeat_interleave(advantages, per_row).to(logps.device)


def _reference_logps(s: Session, rl: Rl, examples: list[Example]) -> torch.Tensor:
    temperature = s.cfg.grpo_temperature
    if rl.reference is not None:
        return _token_logps(rl.reference, examples, temperature)[0]
    with s.loaded.model.disable_adapter():
        return _token_logps(s.loaded, examples, temperature)[0]


def _evaluate(s: Session, rl: Rl) -> None:
    assert rl.val is not None
    cfg = s.cfg
    grades = evaluate_prompts(s.loaded.model, s.loaded.tokenizer, rl.val.prompts, rl.grader, rl.env,
                              samples=cfg.eval_samples, max_new_tokens=cfg.grpo_max_new_tokens,
                              temperature=cfg.grpo_temperature, seed=cfg.seed)
    values = _reward_metrics("eval", grades, rl.grader_names)
    s.reporter.metrics(s.state.step, values)
    s.reporter.event("eval_complete", f"Evaluation at step {s.state.step}: reward {values['eval/reward']:.4f}",
                     step=s.state.step, eval_reward=values["eval/reward"])


def _reward_metrics(split: str, grades: list[Grade], names: list[str]) -> dict[str, float]:
    rewards = torch.tensor([g.reward for g in grades])
    values = {f"{split}/reward": float(rewards.mean()), f"{split}/reward_std": float(rewards.std(unbiased=False)),
              f"{split}/grader_errors": float(sum(g.failed for g in grades))}
    for name in names:
        values[f"{split}/grader/{name}"] = sum(g.scores.get(name, 0.0) for g in grades) / len(grades)
    return values


def main(argv: list[str] | None = None) -> int:
    return entry_point(run, argv, "python -m tunery.training.recipes.grpo", "Reinforcement fine-tuning (GRPO).")


if __name__ == "__main__":
    sys.exit(main())
