"""What every recipe's loop shares: the run's state, its step plan, the optimizer step, evals with
early stopping, checkpoints, stopping, the final export, and the command-line entry point.

A recipe (``recipes/sft.py``, ``recipes/dpo.py``) owns its data, its loss and its loop; it calls
these for everything else, so LoRA vs full, checkpoint layout and exit codes behave the same
whatever the method.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import traceback
from collections.abc import Callable
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
from tunery.training.data.packing import epoch_batches
from tunery.training.export import write_weights
from tunery.training.model import LoadedModel
from tunery.training.reporter import JsonLinesReporter, Reporter
from tunery.training.schedules import evenly_spaced, lr_at, warmup_steps

EXIT_COMPLETED, EXIT_FAILED, EXIT_USER_ERROR, EXIT_STOPPED = 0, 1, 2, 3
MIN_BATCHES_PER_EPOCH = 8  # batch_size="max" stays small enough to give this many steps

StepGroup = list[list[list[int]]]  # micro-batches of rows of item indices


@dataclass
class TrainResult:
    status: Literal["completed", "stopped"]
    step: int
    path: str | None  # the final export, or the stop checkpoint (None if stopped before step 1)
    early_stopped: bool = False


@dataclass
class Plan:
    batch_size: int  # rows per micro-batch
    max_seq_length: int  # per sequence
    row_capacity: int  # tokens per packed row
    steps_per_epoch: int
    total_steps: int
    warmup: int
    eval_steps: set[int]
    checkpoint_steps: set[int]  # intermediate ones; the final export is separate


@dataclass
class Session:
    """Everything one training run holds apart from its data, so helpers take one argument."""

    cfg: TrainConfig
    reporter: Reporter
    loaded: LoadedModel
    plan: Plan
    optimizer: torch.optim.Optimizer
    export_config: dict[str, Any]
    state: TrainState = field(default_factory=TrainState)
    best: dict[str, torch.Tensor] | None = None  # trainable weights at the best eval (early stopping)
    extra: dict[str, torch.Tensor] | None = None  # recipe state kept in checkpoints (DPO reference log-probs)
    last_checkpoint: int = -1


def require_single_process() -> None:
    """The recipes train in one process; under torchrun every rank would train the whole job."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise TrainingFailed(f"multi-process training is not supported yet (WORLD_SIZE={world}); "
                             "run one training process per job")


def start_session(cfg: TrainConfig, reporter: Reporter, loaded: LoadedModel, plan: Plan) -> Session:
    """Build the optimizer and, when resuming, restore it with the loop state and RNGs."""
    export_config = cfg.public_dict(batch_size=plan.batch_size, max_seq_length=plan.max_seq_length)
    s = Session(cfg, reporter, loaded, plan, build_optimizer(loaded, cfg), export_config)
    if cfg.resume_from:
        s.state, s.best, s.extra = load_state(Path(cfg.resume_from) / "state", s.optimizer)
        s.last_checkpoint = s.state.step
    return s


def report_start(s: Session, token_count: int) -> None:
    s.reporter.event(
        "training_start",
        f"Training started: {s.plan.total_steps} steps over {s.cfg.n_epochs} epochs",
        total_steps=s.plan.total_steps,
        token_count=token_count,
        param_count=s.loaded.param_count,
        trainable_param_count=sum(p.numel() for _, p in s.loaded.trainable_parameters),
        batch_size=s.plan.batch_size,
        max_seq_length=s.plan.max_seq_length,
        resumed_from_step=s.state.step,
    )


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def max_seq_length_for(cfg: TrainConfig, loaded: LoadedModel) -> int:
    model_max = int(getattr(loaded.model.config.get_text_config(), "max_position_embeddings", 2048))
    if cfg.max_seq_length is None:
        return model_max
    if cfg.max_seq_length > model_max:
        raise TrainingFailed(
            f"max_seq_length must be <= {model_max} (the model's context length); got {cfg.max_seq_length}",
            user_error=True,
        )
    return cfg.max_seq_length


def make_plan(cfg: TrainConfig, rows: int, has_val: bool, max_len: int, row_capacity: int) -> Plan:
    """Steps, evals and checkpoints for ``rows`` training rows per epoch."""
    if cfg.batch_size == "max":
        from tunery.models.limits import model_limits

        limits = model_limits(cfg.base_model_name or "", cfg.base_model_dir)
        key = "max_batch_size_dpo" if cfg.method == "dpo" else "max_batch_size"
        largest = limits["lora_training" if cfg.lora else "full_training"][key]
        batch_size = max(1, min(largest, rows // MIN_BATCHES_PER_EPOCH))
    else:
        batch_size = cfg.batch_size
    steps_per_epoch = math.ceil(math.ceil(rows / batch_size) / cfg.gradient_accumulation_steps)
    total = steps_per_epoch * cfg.n_epochs
    return Plan(
        batch_size=batch_size,
        max_seq_length=max_len,
        row_capacity=row_capacity,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup=warmup_steps(total, cfg.warmup_ratio),
        eval_steps=set(evenly_spaced(total, cfg.n_evals)) if has_val else set(),
        checkpoint_steps=set(evenly_spaced(total, cfg.n_checkpoints)) - {total},
    )


def build_optimizer(loaded: LoadedModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (all 1-D parameters) get no weight decay."""
    decay = [p for _, p in loaded.trainable_parameters if p.ndim >= 2]
    no_decay = [p for _, p in loaded.trainable_parameters if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def step_groups(s: Session, lengths: list[int], epoch: int) -> list[StepGroup]:
    """This epoch's optimizer steps, each a list of gradient-accumulation micro-batches."""
    batches = epoch_batches(lengths, batch_size=s.plan.batch_size, capacity=s.plan.row_capacity,
                            packing=s.cfg.packing, seed=s.cfg.seed, epoch=epoch)
    ga = s.cfg.gradient_accumulation_steps
    return [batches[i : i + ga] for i in range(0, len(batches), ga)]


def set_learning_rate(s: Session) -> float:
    cfg = s.cfg
    lr = lr_at(s.state.step, s.plan.total_steps, base_lr=cfg.learning_rate, scheduler=cfg.lr_scheduler_type,
               warmup=s.plan.warmup, min_lr_ratio=cfg.min_lr_ratio, num_cycles=cfg.num_cycles)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    return lr


def optimizer_step(s: Session, loss: float, tokens: int) -> float:
    """Clip, step, zero the gradients and count the step; return the pre-clip gradient norm."""
    if not math.isfinite(loss):
        raise TrainingFailed(f"the loss became {loss} at step {s.state.step + 1}; lower the learning_rate",
                             user_error=True)
    params = [p for _, p in s.loaded.trainable_parameters]
    max_norm = s.cfg.max_grad_norm if s.cfg.max_grad_norm > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.state.step += 1
    s.state.step_in_epoch += 1
    s.state.tokens_seen += tokens
    return grad_norm


def track_eval(s: Session, loss: float, **more: float) -> bool:
    """Report an eval, track the best; return True when early stopping says halt."""
    cfg, state = s.cfg, s.state
    s.reporter.metrics(state.step, {"eval/loss": loss, **more})
    s.reporter.event("eval_complete", f"Evaluation at step {state.step}: loss {loss:.4f}",
                     step=state.step, eval_loss=loss)
    state.evals_done += 1
    if cfg.early_stopping_enabled and state.evals_done <= cfg.early_stopping_warmup_evals:
        return False
    if state.best_eval_loss is None or loss < state.best_eval_loss - cfg.early_stopping_min_delta:
        state.best_eval_loss, state.best_step, state.evals_since_best = loss, state.step, 0
        if cfg.early_stopping_enabled:
            s.best = {n: p.detach().to("cpu", copy=True) for n, p in s.loaded.trainable_parameters}
        return False
    state.evals_since_best += 1
    return cfg.early_stopping_enabled and state.evals_since_best >= cfg.early_stopping_patience


def end_epoch_if_done(s: Session, steps_in_epoch: int) -> None:
    state = s.state
    if state.step_in_epoch < steps_in_epoch:
        return
    state.epoch += 1
    state.step_in_epoch = 0
    s.reporter.event("epoch_complete", f"Epoch {state.epoch}/{s.cfg.n_epochs} completed at step {state.step}",
                     epoch=state.epoch, step=state.step)


def maybe_checkpoint(s: Session) -> None:
    if s.state.step in s.plan.checkpoint_steps and s.state.step != s.last_checkpoint:
        write_checkpoint(s)


def write_checkpoint(s: Session) -> str:
    step = s.state.step
    target = checkpoint_dir(s.cfg.output_dir, step)
    with atomic_dir(target) as tmp:
        write_weights(tmp, s.loaded, s.export_config)
        save_state(tmp / "state", s.state, s.optimizer, s.best, s.extra)
    s.last_checkpoint = step
    s.reporter.event("checkpoint_save", f"Checkpoint saved at step {step}", step=step, checkpoint_path=str(target))
    s.reporter.checkpoint(step, str(target), final=False)
    return str(target)


def stop(s: Session) -> TrainResult:
    """Answer a stop request: a resumable checkpoint at this step boundary (if any step ran)."""
    step = s.state.step
    if step == 0:
        return TrainResult("stopped", 0, None)
    path = str(checkpoint_dir(s.cfg.output_dir, step)) if step == s.last_checkpoint else write_checkpoint(s)
    return TrainResult("stopped", step, path)


def finish(s: Session, *, early_stopped: bool) -> TrainResult:
    """Write the final export (the best weights when early stopping halted the run)."""
    state = s.state
    if early_stopped and s.best is not None:
        with torch.no_grad():
            for name, param in s.loaded.trainable_parameters:
                param.copy_(s.best[name].to(param.device))
        s.reporter.event(
            "early_stopped",
            f"Early stopping at step {state.step}: validation loss has not improved for "
            f"{s.cfg.early_stopping_patience} evaluations; the best model (step {state.best_step}) is final",
            step=state.step, best_step=state.best_step, best_metric=state.best_eval_loss,
        )
    target = final_dir(s.cfg.output_dir)
    with atomic_dir(target) as tmp:
        write_weights(tmp, s.loaded, s.export_config)
    s.reporter.event("checkpoint_save", f"Final model saved at step {state.step}", step=state.step,
                     checkpoint_path=str(target))
    s.reporter.checkpoint(state.step, str(target), final=True)
    s.reporter.event("training_complete", f"Training completed at step {state.step}", step=state.step)
    return TrainResult("completed", state.step, str(target), early_stopped)


def warn_about_data(reporter: Reporter, what: str, samples: int, truncated: int, dropped: int, max_len: int) -> None:
    if truncated:
        reporter.event("warning", f"{truncated} of {samples} {what} samples were longer than "
                       f"max_seq_length={max_len} tokens and were truncated", level="warning", truncated=truncated)
    if dropped:
        reporter.event("warning", f"{dropped} {what} samples had no token to train on and were skipped",
                       level="warning", dropped=dropped)


# --- entry point -------------------------------------------------------------------------------


def entry_point(run: Callable[[TrainConfig, Reporter], TrainResult], argv: list[str] | None, prog: str,
                description: str) -> int:
    """Parse ``--config``/``--report``, run, and map the outcome to an exit code (see the recipes)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
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
