"""The body `tunery fine-tuning create` sends, built from its flags (no server)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from tunery.cli.client import CliError
from tunery.cli.create_job import create, request_body


def flags(**overrides: Any) -> dict[str, Any]:
    """The flag values of a bare `create -t file-x -m M`, i.e. the defaults of create's options."""
    defaults = {name: p.default for name, p in inspect.signature(create).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, "training_file": "file-x", "model": "M", **overrides}


def test_defaults_match_the_api_and_leave_the_training_type_to_the_server() -> None:
    assert request_body(flags()) == {
        "training_file": "file-x", "model": "M", "n_epochs": 1, "n_checkpoints": 1, "n_evals": 0, "packing": True,
        "learning_rate": 1e-5, "warmup_ratio": 0.0, "max_grad_norm": 1.0, "weight_decay": 0.0, "priority": 0,
        "early_stopping_enabled": False, "batch_size": "max",
        "lr_scheduler": {"lr_scheduler_type": "cosine", "lr_scheduler_args": {"min_lr_ratio": 0.0, "num_cycles": 0.5}},
        "training_method": {"method": "sft", "train_on_inputs": "auto"},
    }


def test_lora_full_dpo_and_extras() -> None:
    assert request_body(flags(lora=True))["training_type"] == {"type": "Lora"}
    assert request_body(flags(lora_r=16))["training_type"] == {"type": "Lora", "lora_r": 16}
    assert request_body(flags(lora=False))["training_type"] == {"type": "Full"}
    body = request_body(flags(training_method="dpo", dpo_beta=0.2, batch_size="8", lr_scheduler_type="linear",
                              wandb_api_key="k", train_vision=True, train_on_inputs="false"))
    assert body["training_method"] == {"method": "dpo", "dpo_beta": 0.2, "dpo_normalize_logratios_by_length": False,
                                       "dpo_reference_free": False}
    assert body["batch_size"] == 8 and body["wandb_key"] == "k" and body["multimodal_params"] == {"train_vision": True}
    assert body["lr_scheduler"] == {"lr_scheduler_type": "linear", "lr_scheduler_args": {"min_lr_ratio": 0.0}}
    assert request_body(flags(train_on_inputs="true"))["training_method"]["train_on_inputs"] is True


@pytest.mark.parametrize("bad, message", [
    ({"lora": False, "lora_r": 4}, "--no-lora cannot be combined with --lora-r"),
    ({"batch_size": "big"}, "--batch-size must be an integer or max"),
    ({"train_on_inputs": "sometimes"}, "--train-on-inputs must be auto, true or false"),
])
def test_bad_flags_say_what_to_change(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(CliError, match=message):
        request_body(flags(**bad))
