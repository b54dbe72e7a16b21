"""Supervised fine-tuning: LoRA or full, packed or padded, on CPU, one GPU or several.

Run it:

    python -m tunery.training.recipes.sft --config job.json --report report.jsonl
    python -m torch.distributed.run --standalone --nproc-per-node=2 -m tunery.training.recipes.sft \
        --config job.json --report report.jsonl

``job.json`` is a ``TrainConfig`` (see ``tunery/training/config.py``); progress goes to
``report.jsonl`` as JSON lines (see ``tunery/training/reporter.py``); outputs go under the config's
``output_dir`` (``checkpoints/step-N/`` and ``final/``, see ``tunery/training/checkpoint.py``; the
tokenized training set as ``tokenized-train.parquet``, see ``tunery/training/tokenized.py``).
SIGTERM asks the run to stop: it writes a resumable checkpoint at the next step boundary and
exits. The exit code says how it ended (``tunery/training/exit_codes.py``: completed, failed, user
error, stopped on request).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from tunery.errors import TrainingFailed
from tunery.training.attention import attention_for
from tunery.training.config import TrainConfig
from tunery.training.data.collate import Batch, collate
from tunery.training.data.dataset import TokenizedDataset, load_examples
from tunery.training.data.images import with_images
from tunery.training.data.packing import count_rows, epoch_batches
from tunery.training.data.render import Renderer
from tunery.training.distributed import Dist, grad_sync
from tunery.training.launch import entry_point
from tunery.training.model import forward_logps_and_hits, load_for_training, mask_dtype
from tunery.training.reporter import Reporter
from tunery.training.session import (
    Session,
    StepGroup,
    TrainResult,
    check_architecture,
    end_epoch_if_done,
    finish,
    idle_backward,
    loss_scale,
    make_plan,
    max_seq_length_for,
    maybe_checkpoint,
    my_batches,
    my_share,
    open_run,
    optimizer_step,
    report_start,
    seed_everything,
    set_learning_rate,
    should_stop,
    start_session,
    step_groups,
    stop,
    track_eval,
    warn_about_data,
)
from tunery.training.tokenized import write_tokenized


@dataclass
class Data:
    train: TokenizedDataset
    val: TokenizedDataset | None


def run(cfg: TrainConfig, reporter: Reporter) -> TrainResult:
    """Train as ``cfg`` says, reporting to ``reporter``. Raises ``TrainingFailed`` for bad input."""
    with open_run(cfg, reporter) as (reporter, dist):
        return _train(*_setup(cfg, reporter, dist))


def _train(s: Session, data: Data) -> TrainResult:
    cfg, state = s.cfg, s.state
    val_tokens = data.val.num_tokens if data.val else 0
    report_start(s, cfg.n_epochs * data.train.num_tokens + len(s.plan.eval_steps) * val_tokens,
                 trained_tokens_per_epoch=sum(e.num_trained for e in data.train.examples))
    while state.epoch < cfg.n_epochs:
        groups = step_groups(s, data.train.lengths, state.epoch)
        for group in groups[state.step_in_epoch :]:
            if should_stop(s):
                return stop(s)
            values = _train_step(s, data, group)
            values["train/epoch"] = state.epoch + state.step_in_epoch / len(groups)
            s.reporter.metrics(state.step, values)
            end_epoch_if_done(s, len(groups))
            if state.step in s.plan.eval_steps:
                loss, accuracy = _evaluate(s, data)
                if track_eval(s, loss, **accuracy):
                    return finish(s, early_stopped=True)
            maybe_checkpoint(s)
    return finish(s, early_stopped=False)


def _setup(cfg: TrainConfig, reporter: Reporter, dist: Dist) -> tuple[Session, Data]:
    if cfg.method != "sft":
        raise TrainingFailed(f"the SFT recipe cannot run method {cfg.method!r}", user_error=True)
    check_architecture(cfg)
    seed_everything(cfg.seed)
    loaded = load_for_training(cfg, dist)
    max_len = max_seq_length_for(cfg, loaded)
    renderer = with_images(Renderer(loaded.tokenizer, cfg.train_on_inputs), loaded.processor)
    train = load_examples(cfg.train_file, cfg.file_type, renderer, max_len)
    if dist.main:
        write_tokenized(cfg.output_dir, train.examples, reporter)
    val = None
    if cfg.validation_file:
        val = load_examples(cfg.validation_file, cfg.file_type, renderer, max_len, what="validation file")
    for what, d in (("training", train), ("validation", val)):
        if d is not None:
            warn_about_data(reporter, what, d.samples, d.truncated, d.dropped, max_len)
    rows = count_rows(train.lengths, max_len, cfg.packing)
    plan = make_plan(cfg, loaded, dist, rows, val is not None, max_len, row_capacity=max_len)
    return start_session(cfg, reporter, loaded, plan, dist), Data(train, val)


def _train_step(s: Session, data: Data, group: StepGroup) -> dict[str, float]:
    """One optimizer step over ``group`` (gradient-accumulation micro-batches of rows, all ranks')."""
    started = time.perf_counter()
    lr = set_learning_rate(s)
    batches = [_collate(s, data.train, rows) if rows else None for rows in my_share(s, group)]
    # Normalise by the trained tokens of the whole step (every micro-batch of every rank), so
    # accumulation and ranks add up to one big batch.
    [total_targets] = s.dist.sum(sum(b.num_targets for b in batches if b is not None))
    scale = loss_scale(s, total_targets)
    loss_sum, tokens, hits = 0.0, 0, 0
    for i, batch in enumerate(batches):
        with grad_sync(s.loaded.parallel, sync=i == len(batches) - 1):
            if batch is None:  # this rank's share ran out: an idle pass (see my_share)
                idle_backward(s)
                continue
            loss, batch_hits = _loss_sum(s, batch)
            (loss / scale).backward()
        loss_sum += loss.item()
        tokens += batch.num_tokens
        hits += batch_hits
    loss_sum, tokens_all, hits_all = s.dist.sum(loss_sum, tokens, hits)
    loss_value = loss_sum / total_targets
    grad_norm = optimizer_step(s, loss_value, int(tokens_all))
    return {
        "train/loss": loss_value,
        # The share of trained tokens the model's top guess got right (OpenAI's mean token accuracy).
        "train/token_accuracy": hits_all / total_targets,
        "train/learning_rate": lr,
        "train/grad_norm": grad_norm,
        "train/tokens_per_second": tokens_all / max(time.perf_counter() - started, 1e-9),
    }


def _evaluate(s: Session, data: Data) -> tuple[float, dict[str, float]]:
    """Token-weighted mean loss over the validation set (shared out across ranks), and its token
    accuracy as a further eval metric."""
    assert data.val is not None
    s.loaded.model.eval()
    loss_sum, targets, hits = 0.0, 0, 0
    batches = epoch_batches(data.val.lengths, batch_size=s.plan.batch_size, capacity=s.plan.row_capacity,
                            packing=s.cfg.packing, seed=0, epoch=0, shuffle=False)
    with torch.no_grad():
        for rows in my_batches(s, batches):
            batch = _collate(s, data.val, rows)
            loss, batch_hits = _loss_sum(s, batch)
            loss_sum += loss.item()
            targets += batch.num_targets
            hits += batch_hits
    s.loaded.model.train()
    loss_total, target_total, hits_total = s.dist.sum(loss_sum, targets, hits)
    return loss_total / target_total, {"eval/token_accuracy": hits_total / target_total}


def _collate(s: Session, dataset: TokenizedDataset, rows: list[list[int]]) -> Batch:
    examples = dataset.examples
    return collate([[examples[i] for i in row] for row in rows], s.loaded.tokenizer.pad_token_id,
                   s.loaded.images).to(s.loaded.device)


def _loss_sum(s: Session, batch: Batch) -> tuple[torch.Tensor, int]:
    """Sum of ``-log p(target)`` over the batch's trained targets, and how many of them were the
    model's top guess."""
    isolation = attention_for(batch, mask_dtype(s.loaded))
    logps, hits = forward_logps_and_hits(s.loaded, batch.input_ids, batch.position_ids, batch.targets, isolation,
                                         **batch.vision)
    return -logps.sum(), int(hits.sum())


def main(argv: list[str] | None = None) -> int:
    return entry_point(run, argv, "python -m tunery.training.recipes.sft", "Supervised fine-tuning (SFT).")


if __name__ == "__main__":
    sys.exit(main())
