"""What every recipe's loop shares: the run's state, its step plan, the optimizer step, evals with
early stopping, checkpoints, stopping and the final export (the command line is ``launch.py``).

A recipe (``recipes/sft.py``, ``recipes/dpo.py``) owns its data, its loss and its loop; it calls
these for everything else, so LoRA vs full, one process or several, checkpoint layout and exit codes
behave the same whatever the method.

In several processes (``torchrun``, see ``distributed.py``) every rank runs the same loop: each
step's rows are shared out (``my_share``), sums are added up across ranks before anything is
reported, and only rank 0 reports and writes files while the others wait for it (a sharded model's
weights and optimizer state are first gathered onto rank 0, with every rank taking part).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tunery.errors import TrainingFailed
from tunery.training import fsdp
from tunery.training.checkpoint import (
    TrainState,
    atomic_dir,
    checkpoint_dir,
    final_dir,
    load_state,
    optimizer_state,
    rng_states,
    save_state,
)
from tunery.training.config import TrainConfig
from tunery.training.data.collate import attention_bias
from tunery.training.data.packing import epoch_batches
from tunery.training.distributed import Dist, process_group, wrap
from tunery.training.export import write_weights
from tunery.training.model import LoadedModel, forward_logps, mask_dtype, pick_device
from tunery.training.reporter import NullReporter, Reporter
from tunery.training.schedules import evenly_spaced, lr_at, warmup_steps
from tunery.training.tracking import wandb_reporting

MIN_BATCHES_PER_EPOCH = 8  # batch_size="max" stays small enough to give this many steps

Rows = list[list[int]]  # rows of item indices: one micro-batch
StepGroup = list[Rows]  # the micro-batches of one optimizer step


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
    best: dict[str, torch.Tensor] | None = None  # trainable weights at the best eval (early stopping; rank 0)
    extra: dict[str, torch.Tensor] | None = None  # recipe state kept in checkpoints (DPO reference log-probs)
    last_checkpoint: int = -1
    dist: Dist = field(default_factory=Dist)


@contextmanager
def open_run(cfg: TrainConfig, reporter: Reporter) -> Iterator[tuple[Reporter, Dist]]:
    """For a recipe's whole run: join the ranks' process group (if any) and give back the reporter
    this rank reports to: ``reporter`` on rank 0, also logging to W&B when configured; nothing on
    the other ranks."""
    with process_group(pick_device(cfg.device)) as dist:
        if not dist.main:
            yield NullReporter(), dist
            return
        with wandb_reporting(cfg, reporter) as main_reporter:
            yield main_reporter, dist


def start_session(cfg: TrainConfig, reporter: Reporter, loaded: LoadedModel, plan: Plan, dist: Dist) -> Session:
    """Wrap a replicated model for several processes, build the optimizer (over the shards, when
    sharded) and, when resuming, restore the optimizer with the loop state and RNGs."""
    export_config = cfg.public_dict(batch_size=plan.batch_size, max_seq_length=plan.max_seq_length)
    if loaded.sharded:
        loaded.parallel.reshard()  # a batch-size probe can leave the root's weights gathered; AdamW takes shards
    else:
        loaded.parallel = wrap(loaded.scorer, dist)
    s = Session(cfg, reporter, loaded, plan, build_optimizer(loaded, cfg), export_config, dist=dist)
    if cfg.resume_from:
        s.state, s.best, s.extra = load_state(Path(cfg.resume_from) / "state", loaded.model, s.optimizer, dist.rank,
                                              loaded.sharded)
        s.last_checkpoint = s.state.step
    elif not dist.main:
        seed_everything(cfg.seed + dist.rank)  # its own dropout masks; rank 0 draws what one process would
    return s


def report_start(s: Session, token_count: int, trained_tokens_per_epoch: int | None = None) -> None:
    """``trained_tokens_per_epoch`` (SFT): the tokens whose prediction one pass trains, which a
    preview of the whole file adds up to."""
    fields: dict[str, Any] = dict(
        total_steps=s.plan.total_steps,
        token_count=token_count,
        param_count=s.loaded.param_count,
        trainable_param_count=sum(p.numel() for _, p in s.loaded.trainable_parameters),
        batch_size=s.plan.batch_size,
        max_seq_length=s.plan.max_seq_length,
        resumed_from_step=s.state.step,
        processes=s.dist.world,
        sharded=s.loaded.sharded,
    )
    if trained_tokens_per_epoch is not None:
        fields["trained_tokens_per_epoch"] = trained_tokens_per_epoch
    s.reporter.event(
        "training_start",
        f"Training started: {s.plan.total_steps} steps over {s.cfg.n_epochs} epochs"
        + (f" in {s.dist.world} processes" if s.dist.world > 1 else "")
        + (", the model sharded over them (FSDP2)" if s.loaded.sharded else ""),
        **fields,
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


def check_architecture(cfg: TrainConfig) -> None:
    """A bring-your-own model (``from_hf_model``) must be built like the job's template ``model``."""
    if cfg.template_model_dir is None:
        return
    ours, template = _architecture(cfg.base_model_dir), _architecture(cfg.template_model_dir)
    if ours != template:
        name = cfg.from_hf_model or cfg.base_model_dir
        raise TrainingFailed(
            f"from_hf_model {name} is a {_describe(ours)} model, but the job's model {cfg.base_model_name} is a "
            f"{_describe(template)} model; choose as model a base with the same architecture as {name}",
            user_error=True)


def _architecture(model_dir: str) -> tuple[str, tuple[str, ...]]:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return str(config.get("model_type")), tuple(config.get("architectures") or ())


def _describe(arch: tuple[str, tuple[str, ...]]) -> str:
    return f"{arch[0]} ({', '.join(arch[1]) or 'no architectures listed'})"


def make_plan(cfg: TrainConfig, loaded: LoadedModel, dist: Dist, rows: int, has_val: bool, max_len: int,
              row_capacity: int) -> Plan:
    """Steps, evals and checkpoints for ``rows`` training rows per epoch."""
    batch_size = cfg.batch_size if cfg.batch_size != "max" else max_batch_size(cfg, loaded, dist, rows, row_capacity)
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


def max_batch_size(cfg: TrainConfig, loaded: LoadedModel, dist: Dist, rows: int, row_capacity: int) -> int:
    """``batch_size: "max"``: the model's limit, small enough for several steps per epoch, and (on
    CUDA) halved until full-length rows fit on every rank, with activation checkpointing when memory
    demands it (see ``batch_size.py``)."""
    from tunery.models.limits import model_limits
    from tunery.training.batch_size import fitting_batch_size

    limits = model_limits(cfg.base_model_name or "", cfg.base_model_dir)
    key = "max_batch_size_dpo" if cfg.method == "dpo" else "max_batch_size"
    upper = max(1, min(limits["lora_training" if cfg.lora else "full_training"][key], rows // MIN_BATCHES_PER_EPOCH))
    if loaded.device.type != "cuda":
        return upper
    return fitting_batch_size(loaded, dist, upper, row_capacity,
                              accumulating=loaded.sharded and cfg.gradient_accumulation_steps > 1)


def build_optimizer(loaded: LoadedModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (all 1-D parameters) get no weight decay.

    The fused kernel updates each tensor in one pass instead of a dozen elementwise ops: half the
    optimizer time of a full small-llama step on CPU (247 ms against 509 ms)."""
    decay = [p for _, p in loaded.trainable_parameters if p.ndim >= 2]
    no_decay = [p for _, p in loaded.trainable_parameters if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                             fused=loaded.device.type in ("cpu", "cuda"))


def step_groups(s: Session, lengths: list[int], epoch: int) -> list[StepGroup]:
    """This epoch's optimizer steps, each a list of gradient-accumulation micro-batches (all ranks')."""
    batches = epoch_batches(lengths, batch_size=s.plan.batch_size, capacity=s.plan.row_capacity,
                            packing=s.cfg.packing, seed=s.cfg.seed, epoch=epoch)
    ga = s.cfg.gradient_accumulation_steps
    return [batches[i : i + ga] for i in range(0, len(batches), ga)]


def my_share(s: Session, group: StepGroup) -> StepGroup:
    """This rank's part of an optimizer step: rows ``rank::world`` of the step, in micro-batches of
    at most ``batch_size`` rows (so each rank works through fewer, full micro-batches rather than
    more, thinner ones). One process gets the step as planned. In several, every rank gets as many
    micro-batches as rank 0 (which has the most), the missing ones empty: a rank runs an idle pass
    for each (``idle_backward``), so that every rank syncs gradients on the same, last, pass (and,
    sharded, joins every pass's all-gathers)."""
    if s.dist.world == 1:
        return group
    every = [row for batch in group for row in batch]
    size = s.plan.batch_size
    passes = -(-len(every[0 :: s.dist.world]) // size)
    rows = every[s.dist.rank :: s.dist.world]
    return [rows[i * size : (i + 1) * size] for i in range(passes)]


def my_batches(s: Session, batches: list[Rows]) -> Iterator[Rows]:
    """This rank's part of a pass that only adds things up (evals, reference log-probs). A sharded
    model's every forward pass is a collective, so a rank with fewer batches than rank 0 then runs
    idle forward passes, as many as it is short."""
    mine = batches[s.dist.rank :: s.dist.world]
    yield from mine
    if s.loaded.sharded:
        for _ in range(len(batches[0 :: s.dist.world]) - len(mine)):
            _idle_forward(s)


def loss_scale(s: Session, total: float) -> float:
    """What to divide a rank's summed loss by so that, once DDP has averaged the gradients over
    ranks, they are those of the step's mean loss (``total``: the step's targets or pairs, all ranks)."""
    return total / s.dist.world


def idle_backward(s: Session) -> None:
    """A rank with no rows in a micro-batch still takes part in its collectives: a backward pass of
    zero through one token, which contributes nothing."""
    (_idle_forward(s).sum() * 0.0).backward()


def _idle_forward(s: Session) -> torch.Tensor:
    ids = torch.full((1, 1), s.loaded.tokenizer.pad_token_id, dtype=torch.long, device=s.loaded.device)
    positions = torch.zeros_like(ids)
    return forward_logps(s.loaded, ids, positions, ids, attention_bias(positions, mask_dtype(s.loaded)))


def should_stop(s: Session) -> bool:
    """Rank 0's reporter decides, for every rank."""
    return s.dist.main_says(s.reporter.should_stop())


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
    grad_norm = fsdp.clip_grad_norm(params, max_norm)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.state.step += 1
    s.state.step_in_epoch += 1
    s.state.tokens_seen += tokens
    return grad_norm


def track_eval(s: Session, loss: float, **more: float) -> bool:
    """Report an eval (``loss``: the same on every rank), track the best; return True when early
    stopping says halt."""
    return s.dist.main_says(_track_eval(s, loss, **more))


def _track_eval(s: Session, loss: float, **more: float) -> bool:
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
            s.best = _trainable_weights(s)
        return False
    state.evals_since_best += 1
    return cfg.early_stopping_enabled and state.evals_since_best >= cfg.early_stopping_patience


def _trainable_weights(s: Session) -> dict[str, torch.Tensor] | None:
    """A CPU copy of the trainable weights, whole, on rank 0 (None on the others, which help gather
    them when the model is sharded)."""
    if not s.loaded.sharded and not s.dist.main:
        return None
    weights = {n: fsdp.full_tensor(p.detach()).to("cpu", copy=True) for n, p in s.loaded.trainable_parameters}
    return weights if s.dist.main else None


def _restore_best(s: Session) -> None:
    """Put the best weights back (on every rank when sharded: rank 0 sends each its shards)."""
    if s.loaded.sharded:
        fsdp.load_full(s.loaded.parallel, s.loaded.model, s.best or {})
        return
    if s.best is not None:
        with torch.no_grad():
            for name, param in s.loaded.trainable_parameters:
                param.copy_(s.best[name].to(param.device))


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
    """Every rank calls this; rank 0 writes (with every rank's RNG states), the others wait (or,
    sharded, help gather the weights and optimizer state first)."""
    step = s.state.step
    target = checkpoint_dir(s.cfg.output_dir, step)
    rngs = s.dist.gather(rng_states())
    weights = _gathered_weights(s)
    optimizer = optimizer_state(s.loaded.model, s.optimizer)
    if s.dist.main:
        with atomic_dir(target) as tmp:
            write_weights(tmp, s.loaded, s.export_config, weights)
            save_state(tmp / "state", s.state, optimizer, s.best, s.extra, rngs)
        s.reporter.event("checkpoint_save", f"Checkpoint saved at step {step}", step=step,
                         checkpoint_path=str(target))
        s.reporter.checkpoint(step, str(target), final=False)
    s.dist.barrier()
    s.last_checkpoint = step
    return str(target)


def stop(s: Session) -> TrainResult:
    """Answer a stop request: a resumable checkpoint at this step boundary (if any step ran)."""
    step = s.state.step
    if step == 0:
        return TrainResult("stopped", 0, None)
    path = str(checkpoint_dir(s.cfg.output_dir, step)) if step == s.last_checkpoint else write_checkpoint(s)
    return TrainResult("stopped", step, path)


def _gathered_weights(s: Session) -> dict[str, torch.Tensor] | None:
    """A sharded model's whole state dict on rank 0 (every rank helps gather it); None when the
    model is not sharded (rank 0 saves its own copy)."""
    return fsdp.gathered_state(s.loaded.model) if s.loaded.sharded else None


def finish(s: Session, *, early_stopped: bool) -> TrainResult:
    """Write the final export (the best weights when early stopping halted the run)."""
    state = s.state
    target = final_dir(s.cfg.output_dir)
    if early_stopped:
        _restore_best(s)
    weights = _gathered_weights(s)
    if not s.dist.main:
        s.dist.barrier()
        return TrainResult("completed", state.step, str(target), early_stopped)
    if early_stopped:
        s.reporter.event(
            "early_stopped",
            f"Early stopping at step {state.step}: validation loss has not improved for "
            f"{s.cfg.early_stopping_patience} evaluations; the best model (step {state.best_step}) is final",
            step=state.step, best_step=state.best_step, best_metric=state.best_eval_loss,
        )
    with atomic_dir(target) as tmp:
        write_weights(tmp, s.loaded, s.export_config, weights)
    s.reporter.event("checkpoint_save", f"Final model saved at step {state.step}", step=state.step,
                     checkpoint_path=str(target))
    s.reporter.checkpoint(state.step, str(target), final=True)
    s.reporter.event("training_complete", f"Training completed at step {state.step}", step=state.step)
    s.dist.barrier()
    return TrainResult("completed", state.step, str(target), early_stopped)


def warn_about_data(reporter: Reporter, what: str, samples: int, truncated: int, dropped: int, max_len: int) -> None:
    if truncated:
        reporter.event("warning", f"{truncated} of {samples} {what} samples were longer than "
                       f"max_seq_length={max_len} tokens and were truncated", level="warning", truncated=truncated)
    if dropped:
        reporter.event("warning", f"{dropped} {what} samples had no token to train on and were skipped",
                       level="warning", dropped=dropped)
