"""Supervised fine-tuning: LoRA or full, packed or padded, on CPU or one GPU.

Run it:

    python -m tunery.training.recipes.sft --config job.json --report report.jsonl

``job.json`` is a ``TrainConfig`` (see ``tunery/training/config.py``); progress goes to
``report.jsonl`` as JSON lines (see ``tunery/training/reporter.py``); outputs go under the config's
``output_dir`` (``checkpoints/step-N/`` and ``final/``, see ``tunery/training/checkpoint.py``).
SIGTERM asks the run to stop: it writes a resumable checkpoint at the next step boundary and
exits. Exit codes:

    0  completed (early stopping included)
    1  failed for another reason (an ``error`` event carries the message)
    2  user error: bad data or config (an ``error`` event says what to change)
    3  stopped on request; the last checkpoint record names the state to resume from
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError

from tunery.errors import DatasetInvalid, TrainingFailed
from tunery.training.checkpoint import (
    TrainState,
    atomic_dir,
    checkpoint_dir,
    final_dir,
    load_state,
    save_state,
)
from tunery.training.config import TrainConfig
from tunery.training.data.collate import Batch, attention_bias, collate
from tunery.training.data.dataset import TokenizedDataset, load_examples
from tunery.training.data.packing import count_rows, epoch_batches
from tunery.training.data.render import Renderer
from tunery.training.export import write_weights
from tunery.training.losses import token_loss_sum
from tunery.training.model import LoadedModel, forward_logits, load_for_training, mask_dtype
from tunery.training.reporter import JsonLinesReporter, Reporter
from tunery.training.schedules import evenly_spaced, lr_at, warmup_steps

EXIT_COMPLETED, EXIT_FAILED, EXIT_USER_ERROR, EXIT_STOPPED = 0, 1, 2, 3
MIN_BATCHES_PER_EPOCH = 8  # batch_size="max" stays small enough to give this many steps


@dataclass
class TrainResult:
    status: Literal["completed", "stopped"]
    step: int
    path: str | None  # the final export, or the stop checkpoint (None if stopped before step 1)
    early_stopped: bool = False


@dataclass
class Plan:
    batch_size: int
    max_seq_length: int
    steps_per_epoch: int
    total_steps: int
    warmup: int
    eval_steps: set[int]
    checkpoint_steps: set[int]  # intermediate ones; the final export is separate


@dataclass
class Run:
    """Everything one training run holds, so the helpers below take one argument."""

    cfg: TrainConfig
    reporter: Reporter
    loaded: LoadedModel
    train: TokenizedDataset
    val: TokenizedDataset | None
    plan: Plan
    optimizer: torch.optim.Optimizer
    export_config: dict[str, Any]
    state: TrainState = field(default_factory=TrainState)
    best: dict[str, torch.Tensor] | None = None  # trainable weights at the best eval (early stopping)
    last_checkpoint: int = -1


def run(cfg: TrainConfig, reporter: Reporter) -> TrainResult:
    """Train as ``cfg`` says, reporting to ``reporter``. Raises ``TrainingFailed`` for bad input."""
    r = _setup(cfg, reporter)
    state, plan = r.state, r.plan
    reporter.event(
        "training_start",
        f"Training started: {plan.total_steps} steps over {cfg.n_epochs} epochs",
        total_steps=plan.total_steps,
        token_count=cfg.n_epochs * r.train.num_tokens + len(plan.eval_steps) * (r.val.num_tokens if r.val else 0),
        param_count=r.loaded.param_count,
        trainable_param_count=sum(p.numel() for _, p in r.loaded.trainable_parameters),
        batch_size=plan.batch_size,
        max_seq_length=plan.max_seq_length,
        resumed_from_step=state.step,
    )
    while state.epoch < cfg.n_epochs:
        groups = _step_groups(r, state.epoch)
        for group in groups[state.step_in_epoch :]:
            if reporter.should_stop():
                return _stop(r)
            values = _train_step(r, group)
            values["train/epoch"] = state.epoch + state.step_in_epoch / len(groups)
            reporter.metrics(state.step, values)
            if state.step_in_epoch == len(groups):
                _end_epoch(r)
            if state.step in plan.eval_steps and _evaluate_and_track(r):
                return _finish(r, early_stopped=True)
            _maybe_checkpoint(r)
    return _finish(r, early_stopped=False)


def _setup(cfg: TrainConfig, reporter: Reporter) -> Run:
    if cfg.method != "sft":
        raise TrainingFailed(f"the SFT recipe cannot run method {cfg.method!r}", user_error=True)
    _seed_everything(cfg.seed)
    loaded = load_for_training(cfg)
    max_len = _max_seq_length(cfg, loaded)
    renderer = Renderer(loaded.tokenizer, cfg.train_on_inputs)
    train = load_examples(cfg.train_file, cfg.file_type, renderer, max_len)
    val = None
    if cfg.validation_file:
        val = load_examples(cfg.validation_file, cfg.file_type, renderer, max_len, what="validation file")
    _warn_about_data(reporter, train, "training", max_len)
    if val is not None:
        _warn_about_data(reporter, val, "validation", max_len)
    plan = _plan(cfg, train, val is not None, max_len)
    optimizer = _optimizer(loaded, cfg)
    export_config = cfg.public_dict(batch_size=plan.batch_size, max_seq_length=max_len)
    r = Run(cfg, reporter, loaded, train, val, plan, optimizer, export_config)
    if cfg.resume_from:
        r.state, r.best = load_state(Path(cfg.resume_from) / "state", optimizer)
        r.last_checkpoint = r.state.step
    return r


def _train_step(r: Run, group: list[list[list[int]]]) -> dict[str, float]:
    """One optimizer step over ``group`` (gradient-accumulation micro-batches of rows)."""
    cfg, loaded, state = r.cfg, r.loaded, r.state
    started = time.perf_counter()
    lr = lr_at(state.step, r.plan.total_steps, base_lr=cfg.learning_rate, scheduler=cfg.lr_scheduler_type,
               warmup=r.plan.warmup, min_lr_ratio=cfg.min_lr_ratio, num_cycles=cfg.num_cycles)
    for param_group in r.optimizer.param_groups:
        param_group["lr"] = lr
    batches = [_collate(r, rows) for rows in group]
    # Normalise by the trained tokens of the whole step, so accumulation equals one big batch.
    total_targets = sum(b.num_targets for b in batches)
    loss_sum, tokens = 0.0, 0
    for batch in batches:
        loss = _loss_sum(r, batch)
        (loss / total_targets).backward()
        loss_sum += loss.item()
        tokens += batch.num_tokens
    params = [p for _, p in loaded.trainable_parameters]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
    r.optimizer.step()
    r.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.step_in_epoch += 1
    state.tokens_seen += tokens
    loss_value = loss_sum / total_targets
    if not math.isfinite(loss_value):
        raise TrainingFailed(f"the loss became {loss_value} at step {state.step}; lower the learning_rate",
                             user_error=True)
    return {
        "train/loss": loss_value,
        "train/learning_rate": lr,
        "train/grad_norm": float(grad_norm),
        "train/tokens_per_second": tokens / max(time.perf_counter() - started, 1e-9),
    }


def _evaluate(r: Run) -> float:
    """Token-weighted mean loss over the validation set."""
    assert r.val is not None
    r.loaded.model.eval()
    loss_sum, targets = 0.0, 0
    with torch.no_grad():
        for rows in epoch_batches(r.val.lengths, batch_size=r.plan.batch_size, capacity=r.plan.max_seq_length,
                                  packing=r.cfg.packing, seed=0, epoch=0, shuffle=False):
            batch = _collate(r, rows, dataset=r.val)
            loss_sum += _loss_sum(r, batch).item()
            targets += batch.num_targets
    r.loaded.model.train()
    return loss_sum / targets


def _evaluate_and_track(r: Run) -> bool:
    """Run an eval, report it, track the best; return True when early stopping says halt."""
    cfg, state = r.cfg, r.state
    loss = _evaluate(r)
    r.reporter.metrics(state.step, {"eval/loss": loss})
    r.reporter.event("eval_complete", f"Evaluation at step {state.step}: loss {loss:.4f}",
                     step=state.step, eval_loss=loss)
    state.evals_done += 1
    if state.evals_done <= cfg.early_stopping_warmup_evals and cfg.early_stopping_enabled:
        return False
    if state.best_eval_loss is None or loss < state.best_eval_loss - cfg.early_stopping_min_delta:
        state.best_eval_loss, state.best_step, state.evals_since_best = loss, state.step, 0
        if cfg.early_stopping_enabled:
            r.best = {n: p.detach().to("cpu", copy=True) for n, p in r.loaded.trainable_parameters}
        return False
    state.evals_since_best += 1
    return cfg.early_stopping_enabled and state.evals_since_best >= cfg.early_stopping_patience


def _maybe_checkpoint(r: Run) -> None:
    if r.state.step in r.plan.checkpoint_steps and r.state.step != r.last_checkpoint:
        _write_checkpoint(r)


def _write_checkpoint(r: Run) -> str:
    step = r.state.step
    target = checkpoint_dir(r.cfg.output_dir, step)
    with atomic_dir(target) as tmp:
        write_weights(tmp, r.loaded, r.export_config)
        save_state(tmp / "state", r.state, r.optimizer, r.best)
    r.last_checkpoint = step
    r.reporter.event("checkpoint_save", f"Checkpoint saved at step {step}", step=step, checkpoint_path=str(target))
    r.reporter.checkpoint(step, str(target), final=False)
    return str(target)


def _end_epoch(r: Run) -> None:
    state = r.state
    state.epoch += 1
    state.step_in_epoch = 0
    r.reporter.event("epoch_complete", f"Epoch {state.epoch}/{r.cfg.n_epochs} completed at step {state.step}",
                     epoch=state.epoch, step=state.step)


def _stop(r: Run) -> TrainResult:
    step = r.state.step
    if step == 0:
        return TrainResult("stopped", 0, None)
    path = str(checkpoint_dir(r.cfg.output_dir, step)) if step == r.last_checkpoint else _write_checkpoint(r)
    return TrainResult("stopped", step, path)


def _finish(r: Run, *, early_stopped: bool) -> TrainResult:
    state = r.state
    if early_stopped and r.best is not None:
        with torch.no_grad():
            for name, param in r.loaded.trainable_parameters:
                param.copy_(r.best[name].to(param.device))
        r.reporter.event(
            "early_stopped",
            f"Early stopping at step {state.step}: validation loss has not improved for "
            f"{r.cfg.early_stopping_patience} evaluations; the best model (step {state.best_step}) is final",
            step=state.step, best_step=state.best_step, best_metric=state.best_eval_loss,
        )
    target = final_dir(r.cfg.output_dir)
    with atomic_dir(target) as tmp:
        write_weights(tmp, r.loaded, r.export_config)
    r.reporter.event("checkpoint_save", f"Final model saved at step {state.step}", step=state.step,
                     checkpoint_path=str(target))
    r.reporter.checkpoint(state.step, str(target), final=True)
    r.reporter.event("training_complete", f"Training completed at step {state.step}", step=state.step)
    return TrainResult("completed", state.step, str(target), early_stopped)


# --- pieces of setup ---------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _max_seq_length(cfg: TrainConfig, loaded: LoadedModel) -> int:
    config = loaded.model.config
    model_max = int(getattr(config.get_text_config(), "max_position_embeddings", 2048))
    if cfg.max_seq_length is None:
        return model_max
    if cfg.max_seq_length > model_max:
        raise TrainingFailed(
            f"max_seq_length must be <= {model_max} (the model's context length); got {cfg.max_seq_length}",
            user_error=True,
        )
    return cfg.max_seq_length


def _warn_about_data(reporter: Reporter, data: TokenizedDataset, what: str, max_len: int) -> None:
    if data.truncated:
        reporter.event("warning", f"{data.truncated} of {data.samples} {what} samples were longer than "
                       f"max_seq_length={max_len} tokens and were truncated", level="warning",
                       truncated=data.truncated)
    if data.dropped:
        reporter.event("warning", f"{data.dropped} {what} samples had no token to train on and were skipped",
                       level="warning", dropped=data.dropped)


def _plan(cfg: TrainConfig, train: TokenizedDataset, has_val: bool, max_len: int) -> Plan:
    rows = count_rows(train.lengths, max_len, cfg.packing)
    if cfg.batch_size == "max":
        from tunery.models.limits import model_limits

        limits = model_limits(cfg.base_model_name or "", cfg.base_model_dir)
        largest = limits["lora_training" if cfg.lora else "full_training"]["max_batch_size"]
        batch_size = max(1, min(largest, rows // MIN_BATCHES_PER_EPOCH))
    else:
        batch_size = cfg.batch_size
    batches = math.ceil(rows / batch_size)
    steps_per_epoch = math.ceil(batches / cfg.gradient_accumulation_steps)
    total = steps_per_epoch * cfg.n_epochs
    return Plan(
        batch_size=batch_size,
        max_seq_length=max_len,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup=warmup_steps(total, cfg.warmup_ratio),
        eval_steps=set(evenly_spaced(total, cfg.n_evals)) if has_val else set(),
        checkpoint_steps=set(evenly_spaced(total, cfg.n_checkpoints)) - {total},
    )


def _optimizer(loaded: LoadedModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (all 1-D parameters) get no weight decay."""
    decay = [p for _, p in loaded.trainable_parameters if p.ndim >= 2]
    no_decay = [p for _, p in loaded.trainable_parameters if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def _step_groups(r: Run, epoch: int) -> list[list[list[list[int]]]]:
    batches = epoch_batches(r.train.lengths, batch_size=r.plan.batch_size, capacity=r.plan.max_seq_length,
                            packing=r.cfg.packing, seed=r.cfg.seed, epoch=epoch)
    ga = r.cfg.gradient_accumulation_steps
    return [batches[i : i + ga] for i in range(0, len(batches), ga)]


def _collate(r: Run, rows: list[list[int]], dataset: TokenizedDataset | None = None) -> Batch:
    examples = (dataset or r.train).examples
    return collate([[examples[i] for i in row] for row in rows], r.loaded.tokenizer.pad_token_id).to(r.loaded.device)


def _loss_sum(r: Run, batch: Batch) -> torch.Tensor:
    bias = attention_bias(batch.segment_ids, mask_dtype(r.loaded))
    return token_loss_sum(forward_logits(r.loaded, batch.input_ids, batch.position_ids, bias), batch.targets)


# --- entry point -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunery.training.recipes.sft", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="TrainConfig JSON file")
    parser.add_argument("--report", required=True, help="file to append JSON-lines progress records to")
    args = parser.parse_args(argv)
    _quiet_libraries()
    with JsonLinesReporter(args.report) as reporter:
        try:
            result = run(TrainConfig.from_file(args.config), reporter)
        except (TrainingFailed, DatasetInvalid, ValidationError) as exc:
            user = not isinstance(exc, TrainingFailed) or exc.user_error
            reporter.event("error", _message(exc), level="error", user_error=user)
            return EXIT_USER_ERROR if user else EXIT_FAILED
        except Exception as exc:  # noqa: BLE001 - every failure must reach the report
            reporter.event("error", f"{type(exc).__name__}: {exc}", level="error", user_error=False)
            traceback.print_exc()  # the full story goes to stderr, which the worker keeps
            return EXIT_FAILED
    return EXIT_STOPPED if result.status == "stopped" else EXIT_COMPLETED


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        return "invalid training config: " + "; ".join(problems)
    return str(exc)


def _quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
