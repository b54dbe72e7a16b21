from __future__ import annotations

import pytest
from pydantic import ValidationError

from tunery.training.config import TrainConfig

BASE = {"job_id": "ft-1", "base_model_dir": "/m", "train_file": "/t.jsonl", "output_dir": "/o"}


def test_defaults_follow_together() -> None:
    config = TrainConfig(**BASE)
    assert config.method == "sft" and config.lora is not None and config.lora.lora_alpha == 16
    assert (config.n_epochs, config.learning_rate, config.lr_scheduler_type) == (1, 1e-5, "cosine")
    assert (config.batch_size, config.packing, config.train_on_inputs, config.seed) == ("max", True, "auto", 42)
    assert (config.max_grad_norm, config.n_checkpoints, config.n_evals) == (1.0, 1, 0)


def test_every_problem_is_reported_at_once_with_what_to_change() -> None:
    with pytest.raises(ValidationError) as caught:
        TrainConfig(**BASE, learning_rate=5, n_epochs=0, warmup_ratio=2, n_evals=3,
                    lora={"r": 8, "dropout": 1.0})
    message = str(caught.value)
    for part in ("learning_rate must be in (0, 1]; got 5", "n_epochs must be >= 1; got 0",
                 "warmup_ratio must be in [0, 1]; got 2", "n_evals > 0 needs a validation_file",
                 "lora.dropout must be in [0, 1); got 1.0"):
        assert part in message


def test_early_stopping_needs_enough_evals() -> None:
    with pytest.raises(ValidationError, match=r"n_evals >= patience \+ warmup_evals \+ 1 = 4; got n_evals=3"):
        TrainConfig(**BASE, validation_file="/v.jsonl", n_evals=3, early_stopping_enabled=True)


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="learning_rat"):
        TrainConfig(**BASE, learning_rat=1e-4)


def test_secrets_round_trip_for_the_child_but_never_reach_exports() -> None:
    config = TrainConfig(**BASE, wandb_api_key="wk-secret", hf_api_token="hf-secret")
    again = TrainConfig.model_validate_json(config.model_dump_json())
    assert again.wandb_api_key is not None and again.wandb_api_key.get_secret_value() == "wk-secret"
    public = config.public_dict(batch_size=4)
    assert "wk-secret" not in str(public) and "hf-secret" not in str(public)
    assert "wandb_api_key" not in public and public["batch_size"] == 4
    assert "secret" not in repr(config)
    TrainConfig.model_validate(public)  # an export's training_config.json is itself a valid config
