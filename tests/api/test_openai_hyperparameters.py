"""How OpenAI's "auto" hyperparameters resolve (the rules README's migration guide documents)."""

from __future__ import annotations

import pytest

from tunery.api.openai.hyperparameters import compute_multiplier, group_size, resolve


@pytest.mark.parametrize(("examples", "epochs"), [(1, 25), (10, 10), (34, 3), (50, 3), (8_333, 3), (8_334, 2),
                                                  (10_000, 2), (30_000, 1)])
def test_auto_epochs_aim_at_100_to_25000_examples_seen(examples: int, epochs: int) -> None:
    chosen = resolve("supervised", examples, 16, n_epochs="auto", batch_size="auto", learning_rate_multiplier="auto",
                     beta=None)
    assert chosen.n_epochs == epochs


@pytest.mark.parametrize(("examples", "model_max", "batch", "multiplier"),
                         [(10, 16, 1, 0.05), (3_000, 16, 6, 0.05), (5_000, 16, 10, 0.1), (5_000, 8, 8, 0.1),
                          (20_000, 64, 40, 0.2), (500_000, 512, 256, 0.2)])
def test_auto_batch_is_a_fifth_of_a_percent_within_the_models_limit(examples: int, model_max: int, batch: int,
                                                                    multiplier: float) -> None:
    chosen = resolve("supervised", examples, model_max, n_epochs=1, batch_size="auto",
                     learning_rate_multiplier="auto", beta=None)
    assert (chosen.batch_size, chosen.learning_rate_multiplier) == (batch, multiplier)
    assert chosen.learning_rate("supervised") == pytest.approx(1e-3 * multiplier)
    assert chosen.beta is None


def test_numbers_pass_through_and_dpo_gets_its_beta_and_base() -> None:
    chosen = resolve("dpo", 100, 16, n_epochs=2, batch_size=4, learning_rate_multiplier=0.5, beta="auto")
    assert (chosen.n_epochs, chosen.batch_size, chosen.learning_rate_multiplier, chosen.beta) == (2, 4, 0.5, 0.1)
    assert chosen.learning_rate("dpo") == pytest.approx(5e-5)
    assert resolve("dpo", 100, 16, n_epochs=2, batch_size=4, learning_rate_multiplier=1, beta=0.3).beta == 0.3


@pytest.mark.parametrize(("multiplier", "group"), [("auto", 4), (1, 4), (0.5, 2), (0.1, 2), (2.5, 10), (16, 64)])
def test_reinforcement_compute_multiplier_scales_the_completions_per_prompt(multiplier: float | str,
                                                                           group: int) -> None:
    assert group_size(multiplier) == group  # type: ignore[arg-type]
    if multiplier not in ("auto", 0.1):  # below a group of 2 there is nothing to compare: clamped
        assert compute_multiplier(group) == multiplier


def test_reinforcement_has_its_own_base_learning_rate_and_no_beta() -> None:
    chosen = resolve("reinforcement", 10, 16, n_epochs="auto", batch_size="auto", learning_rate_multiplier="auto",
                     beta=None)
    assert chosen.learning_rate("reinforcement") == pytest.approx(2e-4 * 0.05) and chosen.beta is None
