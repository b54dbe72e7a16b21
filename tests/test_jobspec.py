"""JobSpec → TrainConfig: every field the spec holds reaches the training config by name, and a
stored spec reads back equal."""

from __future__ import annotations

from pathlib import Path

from tests.job_rows import job_spec
from tunery.jobspec import (
    DPO,
    SFT,
    EarlyStopping,
    FullTraining,
    JobSecrets,
    JobSpec,
    LocalInputs,
    LoraTraining,
    LrScheduler,
    LrSchedulerArgs,
    Parent,
    Wandb,
)

INPUTS = LocalInputs(base_model_dir=Path("/m"), train_file=Path("/t.jsonl"), file_type="jsonl",
                     output_dir=Path("/out"), validation_file=Path("/v.jsonl"), init_from=Path("/init"),
                     resume_from=Path("/resume"), template_model_dir=Path("/template"))


def test_a_lora_sft_spec_reaches_the_train_config_whole() -> None:
    spec = job_spec(
        model="org/base", validation_file="file-v", from_hf_model="me/weights", hf_model_revision="abc",
        parent=Parent(job_id="ft-p", step=3), hf_output_repo_name="me/out",
        wandb=Wandb(project_name="p", name="n", entity="e", base_url="http://wandb"),
        training_type=LoraTraining(lora_r=4, lora_alpha=12, lora_dropout=0.125,
                                   lora_trainable_modules="q_proj, v_proj"),
        training_method=SFT(train_on_inputs=True), n_epochs=3, n_checkpoints=2, n_evals=5, batch_size=16,
        gradient_accumulation_steps=2, learning_rate=3e-4,
        lr_scheduler=LrScheduler(lr_scheduler_type="linear", lr_scheduler_args=LrSchedulerArgs(min_lr_ratio=0.25)),
        warmup_ratio=0.1, max_grad_norm=0.5, weight_decay=0.01, max_seq_length=300, packing=False, random_seed=9,
        early_stopping=EarlyStopping(enabled=True, patience=2, min_delta=0.01, warmup_evals=2),
    )
    config = spec.train_config("ft-1", INPUTS, JobSecrets(wandb_key="wk", hf_api_token="ht"))
    assert config.lora is not None
    assert (config.lora.r, config.lora.lora_alpha, config.lora.dropout) == (4, 12, 0.125)
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert (config.method, config.train_on_inputs) == ("sft", True)
    assert (config.base_model_dir, config.base_model_name, config.template_model_dir) == ("/m", "org/base", "/template")
    assert (config.from_hf_model, config.hf_model_revision) == ("me/weights", "abc")
    assert config.hf_output_repo_name == "me/out"
    assert (config.init_from, config.resume_from, config.train_file, config.validation_file) == (
        "/init", "/resume", "/t.jsonl", "/v.jsonl")
    assert (config.n_epochs, config.n_checkpoints, config.n_evals, config.batch_size) == (3, 2, 5, 16)
    assert (config.gradient_accumulation_steps, config.learning_rate, config.lr_scheduler_type) == (2, 3e-4, "linear")
    assert (config.min_lr_ratio, config.warmup_ratio) == (0.25, 0.1)
    assert (config.max_grad_norm, config.weight_decay) == (0.5, 0.01)
    assert (config.max_seq_length, config.packing, config.seed) == (300, False, 9)
    assert (config.early_stopping_enabled, config.early_stopping_patience, config.early_stopping_min_delta,
            config.early_stopping_warmup_evals) == (True, 2, 0.01, 2)
    assert (config.wandb_project_name, config.wandb_name, config.wandb_entity, config.wandb_base_url) == (
        "p", "n", "e", "http://wandb")
    assert config.wandb_api_key is not None and config.wandb_api_key.get_secret_value() == "wk"
    assert config.hf_api_token is not None and config.hf_api_token.get_secret_value() == "ht"


def test_a_full_dpo_spec_reaches_the_train_config_whole() -> None:
    method = DPO(dpo_beta=0.3, rpo_alpha=0.5, simpo_gamma=1.5, dpo_normalize_logratios_by_length=True,
                 dpo_reference_free=True)
    spec = job_spec(training_type=FullTraining(), training_method=method,
                    lr_scheduler=LrScheduler(lr_scheduler_args=LrSchedulerArgs(num_cycles=2.0)))
    config = spec.train_config("ft-1", INPUTS, JobSecrets())
    assert config.lora is None and config.method == "dpo" and config.num_cycles == 2.0
    assert (config.dpo_beta, config.rpo_alpha, config.simpo_gamma) == (0.3, 0.5, 1.5)
    assert config.dpo_normalize_logratios_by_length and config.dpo_reference_free
    assert config.wandb_api_key is None and config.hf_api_token is None


def test_a_spec_round_trips_through_json() -> None:
    spec = job_spec(training_method=DPO(), parent=Parent(job_id="ft-p"))
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec
