"""Direct preference optimization (DPO), with its RPO and SimPO variants: LoRA or full.

Run it:

    python -m tunery.training.recipes.dpo --config job.json --report report.jsonl

Same config, report, outputs, exit codes and ``torchrun`` use as ``recipes/sft.py``; the training file holds
preference samples (``input``, ``preferred_output``, ``non_preferred_output``).

Each step pushes the policy's log-probability of the preferred reply up, relative to the
non-preferred one, measured against a *reference* model: the model as it was when the job started
(the base model, or the checkpoint the job continues from). The reference log-probabilities are
computed once, before the first step, and kept in checkpoints, so no second model is held in memory
and a resumed job uses the very same ones. The knobs:

    dpo_beta                           β: how far the policy may move from the reference
    rpo_alpha                          RPO: adds α × the preferred reply's mean negative log-likelihood
    dpo_normalize_logratios_by_length  compare mean rather than summed token log-probabilities
    dpo_reference_free                 no reference model (its log-probabilities are taken as 0)
    simpo_gamma                        SimPO when > 0: reference-free, length-normalised, target margin γ

A pair is packed into one row (chosen and rejected as two samples that cannot see each other), so
``max_seq_length`` bounds each reply's sequence and a row holds ``2 × max_seq_length`` tokens.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from tunery.errors import TrainingFailed
from tunery.training.attention import attention_for
from tunery.training.config import TrainConfig
from tunery.training.data.collate import collate
from tunery.training.data.dataset import PairDataset, load_pairs
from tunery.training.data.images import with_images
from tunery.training.data.packing import count_rows, epoch_batches
from tunery.training.data.render import Renderer
from tunery.training.distributed import Dist, grad_sync
from tunery.training.launch import entry_point
from tunery.training.losses import dpo_loss, sequence_logps
from tunery.training.model import forward_logps, load_for_training, mask_dtype
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


@dataclass(frozen=True)
class Objective:
    beta: float
    gamma: float
    rpo_alpha: float
    normalize: bool
    reference_free: bool

    @classmethod
    def of(cls, cfg: TrainConfig) -> Objective:
        simpo = cfg.simpo_gamma > 0  # SimPO implies both, as Together's SDK sets them
        return cls(cfg.dpo_beta, cfg.simpo_gamma, cfg.rpo_alpha,
                   cfg.dpo_normalize_logratios_by_length or simpo, cfg.dpo_reference_free or simpo)


@dataclass
class Data:
    train: PairDataset
    val: PairDataset | None


@dataclass
class PairScores:
    """Log-probabilities of the pairs of one micro-batch, in row order."""

    index: list[int]  # the pairs' indices in their dataset
    chosen: torch.Tensor  # [P]: summed (or mean) log-prob of the preferred reply
    rejected: torch.Tensor  # [P]
    chosen_nll: torch.Tensor  # [P]: mean negative log-likelihood of the preferred reply (RPO)
    tokens: int


@dataclass
class Rewards:
    """The implicit rewards ``β·(log-ratio)`` of the pairs of one micro-batch, detached."""

    chosen: torch.Tensor  # [P]
    rejected: torch.Tensor  # [P]

    @property
    def margin(self) -> torch.Tensor:
        return self.chosen - self.rejected


def run(cfg: TrainConfig, reporter: Reporter) -> TrainResult:
    """Train as ``cfg`` says, reporting to ``reporter``. Raises ``TrainingFailed`` for bad input."""
    with open_run(cfg, reporter) as (reporter, dist):
        return _train(*_setup(cfg, reporter, dist))


def _train(s: Session, data: Data, objective: Objective) -> TrainResult:
    cfg, state = s.cfg, s.state
    val_tokens = data.val.num_tokens if data.val else 0
    report_start(s, cfg.n_epochs * data.train.num_tokens + len(s.plan.eval_steps) * val_tokens)
    while state.epoch < cfg.n_epochs:
        groups = step_groups(s, data.train.lengths, state.epoch)
        for group in groups[state.step_in_epoch :]:
            if should_stop(s):
                return stop(s)
            values = _train_step(s, data, objective, group)
            values["train/epoch"] = state.epoch + state.step_in_epoch / len(groups)
            s.reporter.metrics(state.step, values)
            end_epoch_if_done(s, len(groups))
            if state.step in s.plan.eval_steps:
                loss, accuracy = _evaluate(s, data, objective)
                if track_eval(s, loss, **{"eval/reward_accuracy": accuracy}):
                    return finish(s, early_stopped=True)
            maybe_checkpoint(s)
    return finish(s, early_stopped=False)


def _setup(cfg: TrainConfig, reporter: Reporter, dist: Dist) -> tuple[Session, Data, Objective]:
    if cfg.method != "dpo":
        raise TrainingFailed(f"the DPO recipe cannot run method {cfg.method!r}", user_error=True)
    check_architecture(cfg)
    seed_everything(cfg.seed)
    loaded = load_for_training(cfg, dist)
    max_len = max_seq_length_for(cfg, loaded)
    renderer = with_images(Renderer(loaded.tokenizer, False), loaded.processor)
    train = load_pairs(cfg.train_file, cfg.file_type, renderer, max_len)
    if dist.main:
        write_tokenized(cfg.output_dir, [e for pair in train.pairs for e in pair], reporter, pairs=True)
    val = load_pairs(cfg.validation_file, cfg.file_type, renderer, max_len, what="validation file") \
        if cfg.validation_file else None
    for what, d in (("training", train), ("validation", val)):
        if d is not None:
            warn_about_data(reporter, what, d.samples, d.truncated, d.dropped, max_len)
    rows = count_rows(train.lengths, 2 * max_len, cfg.packing)
    plan = make_plan(cfg, loaded, dist, rows, val is not None, max_len, row_capacity=2 * max_len)
    s = start_session(cfg, reporter, loaded, plan, dist)
    data, objective = Data(train, val), Objective.of(cfg)
    if s.extra is None and not objective.reference_free:  # a resumed job brings its own
        s.extra = _reference_logps(s, data, objective)
    return s, data, objective


def _train_step(s: Session, data: Data, objective: Objective, group: StepGroup) -> dict[str, float]:
    """One optimizer step over ``group``: the mean loss over every pair of the step (all ranks')."""
    started = time.perf_counter()
    lr = set_learning_rate(s)
    total_pairs = sum(len(row) for rows in group for row in rows)
    scale = loss_scale(s, total_pairs)
    mine = my_share(s, group)
    loss_sum, chosen_sum, rejected_sum, correct, tokens = 0.0, 0.0, 0.0, 0, 0
    for i, rows in enumerate(mine):
        with grad_sync(s.loaded.parallel, sync=i == len(mine) - 1):
            if not rows:  # this rank's share ran out: an idle pass (see my_share)
                idle_backward(s)
                continue
            losses, rewards, scores = _pair_losses(s, data.train, "train", objective, rows)
            (losses.sum() / scale).backward()
        loss_sum += float(losses.detach().sum())
        chosen_sum += float(rewards.chosen.sum())
        rejected_sum += float(rewards.rejected.sum())
        correct += int((rewards.margin > 0).sum())
        tokens += scores.tokens
    loss_sum, chosen_sum, rejected_sum, correct_all, tokens_all = s.dist.sum(
        loss_sum, chosen_sum, rejected_sum, correct, tokens)
    loss = loss_sum / total_pairs
    grad_norm = optimizer_step(s, loss, int(tokens_all))
    return {
        "train/loss": loss,
        "train/learning_rate": lr,
        "train/grad_norm": grad_norm,
        "train/tokens_per_second": tokens_all / max(time.perf_counter() - started, 1e-9),
        "train/reward_accuracy": correct_all / total_pairs,
        "train/reward_margin": (chosen_sum - rejected_sum) / total_pairs,
        "train/chosen_reward": chosen_sum / total_pairs,
        "train/rejected_reward": rejected_sum / total_pairs,
    }


def _evaluate(s: Session, data: Data, objective: Objective) -> tuple[float, float]:
    """Mean loss and reward accuracy (preferred reply ahead) over the validation pairs."""
    assert data.val is not None
    s.loaded.model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for rows in my_batches(s, _fixed_batches(s, data.val)):
            losses, rewards, _ = _pair_losses(s, data.val, "val", objective, rows)
            loss_sum += float(losses.sum())
            correct += int((rewards.margin > 0).sum())
    s.loaded.model.train()
    loss_total, correct_all = s.dist.sum(loss_sum, correct)
    return loss_total / len(data.val.pairs), correct_all / len(data.val.pairs)


def _pair_losses(
    s: Session, dataset: PairDataset, split: str, objective: Objective, rows: list[list[int]]
) -> tuple[torch.Tensor, Rewards, PairScores]:
    """Per-pair losses and implicit rewards for one micro-batch."""
    scores = _score(s, dataset, rows, objective)
    if objective.reference_free:
        ref_chosen = ref_rejected = torch.zeros_like(scores.chosen)
    else:
        assert s.extra is not None
        index = torch.tensor(scores.index)
        ref_chosen = s.extra[f"{split}_chosen"][index].to(scores.chosen.device)
        ref_rejected = s.extra[f"{split}_rejected"][index].to(scores.chosen.device)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        scores.chosen, scores.rejected, ref_chosen, ref_rejected, beta=objective.beta, gamma=objective.gamma)
    if objective.rpo_alpha > 0:
        losses = losses + objective.rpo_alpha * scores.chosen_nll
    return losses, Rewards(chosen_rewards.detach(), rejected_rewards.detach()), scores


def _score(s: Session, dataset: PairDataset, rows: list[list[int]], objective: Objective) -> PairScores:
    """Run the model over rows of pairs; row ``b`` holds pair ``k`` as segments ``2k`` and ``2k + 1``."""
    batch = collate([[e for i in row for e in dataset.pairs[i]] for row in rows],
                    s.loaded.tokenizer.pad_token_id, s.loaded.images).to(s.loaded.device)
    logps = forward_logps(s.loaded, batch.input_ids, batch.position_ids, batch.targets,
                          attention_for(batch, mask_dtype(s.loaded)), **batch.vision)
    sums, counts = sequence_logps(logps, batch.targets, batch.segment_ids, int(batch.segment_ids.max()) + 1)
    b = torch.tensor([b for b, row in enumerate(rows) for _ in row])
    k = torch.tensor([k for row in rows for k in range(len(row))])
    chosen, rejected = sums[b, 2 * k], sums[b, 2 * k + 1]
    chosen_n, rejected_n = counts[b, 2 * k], counts[b, 2 * k + 1]
    if objective.normalize:
        chosen, rejected = chosen / chosen_n, rejected / rejected_n
    index = [i for row in rows for i in row]
    return PairScores(index, chosen, rejected, -sums[b, 2 * k] / chosen_n, batch.num_tokens)


def _reference_logps(s: Session, data: Data, objective: Objective) -> dict[str, torch.Tensor]:
    """The starting model's log-probabilities of every pair, by split and dataset index (each rank
    scores its share; the sums put every rank's share on every rank)."""
    s.loaded.model.eval()
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for split, dataset in (("train", data.train), ("val", data.val)):
            if dataset is None:
                continue
            chosen, rejected = torch.zeros(len(dataset.pairs)), torch.zeros(len(dataset.pairs))
            for rows in my_batches(s, _fixed_batches(s, dataset)):
                scores = _score(s, dataset, rows, objective)
                chosen[scores.index] = scores.chosen.float().cpu()
                rejected[scores.index] = scores.rejected.float().cpu()
            s.dist.sum_(chosen)
            s.dist.sum_(rejected)
            out[f"{split}_chosen"], out[f"{split}_rejected"] = chosen, rejected
    s.loaded.model.train()
    return out


def _fixed_batches(s: Session, dataset: PairDataset) -> list[list[list[int]]]:
    return epoch_batches(dataset.lengths, batch_size=s.plan.batch_size, capacity=s.plan.row_capacity,
                         packing=s.cfg.packing, seed=0, epoch=0, shuffle=False)


def main(argv: list[str] | None = None) -> int:
    return entry_point(run, argv, "python -m tunery.training.recipes.dpo", "Direct preference optimization (DPO).")


if __name__ == "__main__":
    sys.exit(main())
