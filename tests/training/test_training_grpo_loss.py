"""GRPO's advantages and token loss on tiny tensors, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tunery.training.losses import group_advantages, grpo_token_losses


def test_advantages_are_relative_to_each_group() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    adv = group_advantages(rewards, group_size=4)
    # group 1: mean 0.5, population std 0.5 -> ±1; group 2: all equal -> 0 (nothing to learn)
    assert adv.tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0], rel=1e-3)


def test_token_loss_clips_the_ratio_in_the_direction_of_the_advantage() -> None:
    old = torch.zeros(4)
    logps = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.1]))  # ratios 1.5, 1.5, 0.5, 1.1
    adv = torch.tensor([1.0, -1.0, -1.0, 2.0])
    losses, clipped, kl = grpo_token_losses(logps, old, None, adv, epsilon=0.2, beta=0.0)
    # min(r·A, clip(r)·A): 1.2 (clipped), -1.5 (unclipped: worse side), -0.8 (clipped), 2.2
    assert losses.tolist() == pytest.approx([-1.2, 1.5, 0.8, -2.2])
    assert clipped.tolist() == [True, False, True, False]
    assert kl.tolist() == [0.0] * 4


def test_kl_penalty_is_the_k3_estimator_weighted_by_beta() -> None:
    logps, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    losses, _, kl = grpo_token_losses(logps, logps.clone(), ref, torch.tensor([0.0]), epsilon=0.2, beta=0.1)
    expected_kl = 0.5 - math.log(0.5) - 1  # exp(ref - logp) - (ref - logp) - 1 with ref - logp = log 0.5
    assert kl.item() == pytest.approx(expected_kl)
    assert losses.item() == pytest.approx(0.1 * expected_kl)


def test_the_gradient_at_ratio_one_is_the_policy_gradient() -> None:
    logps = torch.log(torch.tensor([0.2, 0.6])).requires_grad_()
    adv = torch.tensor([1.0, -0.5])
    losses, _, _ = grpo_token_losses(logps, logps.detach(), None, adv, epsilon=0.2, beta=0.0)
    losses.sum().backward()
    assert logps.grad is not None and logps.grad.tolist() == pytest.approx([-1.0, 0.5])  # -A per token
