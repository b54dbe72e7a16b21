"""`tunery fine-tuning create`: one flag per field of ``POST /v1/fine-tunes``, with the API's defaults.

A flag left unset is not sent, so the server applies its own default; in particular, without
``--lora``/``--no-lora`` (or a LoRA flag) the job is LoRA, as with Together. ``--training-file``
and ``--validation-file`` take a file id or a local dataset, which is uploaded first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunery.cli.client import ApiKey, BaseUrl, Client, CliError
from tunery.cli.output import Json, print_json
from tunery.cli.transfer import upload_file
from tunery.cli.watch import watch_job

SCHEDULE, OPTIMIZER, LORA, METHOD, OUTPUT, EARLY, HF = (
    "Schedule", "Optimizer", "LoRA", "Training method", "Output and tracking", "Early stopping", "Hugging Face")


def _opt(*names: str, panel: str | None = None, help: str | None = None) -> Any:
    return typer.Option(*names, rich_help_panel=panel, help=help)


def create(
    training_file: Annotated[str, _opt("--training-file", "-t", help="File id, or a local dataset to upload.")],
    model: Annotated[str | None, _opt("--model", "-m", help="Base model, e.g. tunery/tiny-llama.")] = None,
    from_checkpoint: Annotated[str | None, _opt(
        "--from-checkpoint", help="Continue from a job: ft-…, ft-…:STEP or an output model name.")] = None,
    validation_file: Annotated[str | None, _opt("--validation-file", "-v", help="File id or local dataset.")] = None,
    n_epochs: Annotated[int, _opt("--n-epochs", panel=SCHEDULE)] = 1,
    n_checkpoints: Annotated[int, _opt("--n-checkpoints", panel=SCHEDULE, help="Including the final one.")] = 1,
    n_evals: Annotated[int, _opt("--n-evals", panel=SCHEDULE, help="Evaluations on the validation file.")] = 0,
    max_seq_length: Annotated[int | None, _opt("--max-seq-length", panel=SCHEDULE)] = None,
    batch_size: Annotated[str, _opt("--batch-size", "-b", panel=SCHEDULE, help="An integer or max.")] = "max",
    gradient_accumulation_steps: Annotated[int | None, _opt("--gradient-accumulation-steps", panel=SCHEDULE)] = None,
    packing: Annotated[bool, _opt("--packing/--no-packing", panel=SCHEDULE)] = True,
    learning_rate: Annotated[float, _opt("--learning-rate", "--lr", panel=OPTIMIZER)] = 1e-5,
    lr_scheduler_type: Annotated[str, _opt("--lr-scheduler-type", panel=OPTIMIZER, help="cosine or linear.")] = (
        "cosine"),
    min_lr_ratio: Annotated[float, _opt("--min-lr-ratio", panel=OPTIMIZER)] = 0.0,
    scheduler_num_cycles: Annotated[float, _opt("--scheduler-num-cycles", panel=OPTIMIZER)] = 0.5,
    warmup_ratio: Annotated[float, _opt("--warmup-ratio", panel=OPTIMIZER)] = 0.0,
    max_grad_norm: Annotated[float, _opt("--max-grad-norm", panel=OPTIMIZER, help="0 disables clipping.")] = 1.0,
    weight_decay: Annotated[float, _opt("--weight-decay", panel=OPTIMIZER)] = 0.0,
    lora: Annotated[bool | None, _opt("--lora/--no-lora", panel=LORA, help="LoRA or full fine-tuning.")] = None,
    lora_r: Annotated[int | None, _opt("--lora-r", panel=LORA)] = None,
    lora_alpha: Annotated[int | None, _opt("--lora-alpha", panel=LORA, help="Default 2 × r.")] = None,
    lora_dropout: Annotated[float | None, _opt("--lora-dropout", panel=LORA)] = None,
    lora_trainable_modules: Annotated[str | None, _opt("--lora-trainable-modules", panel=LORA)] = None,
    training_method: Annotated[str, _opt("--training-method", panel=METHOD, help="sft or dpo.")] = "sft",
    train_on_inputs: Annotated[str, _opt("--train-on-inputs", panel=METHOD, help="auto, true or false.")] = "auto",
    dpo_beta: Annotated[float | None, _opt("--dpo-beta", panel=METHOD)] = None,
    dpo_normalize_logratios_by_length: Annotated[bool, _opt("--dpo-normalize-logratios-by-length",
                                                            panel=METHOD)] = False,
    dpo_reference_free: Annotated[bool, _opt("--dpo-reference-free", panel=METHOD)] = False,
    rpo_alpha: Annotated[float | None, _opt("--rpo-alpha", panel=METHOD)] = None,
    simpo_gamma: Annotated[float | None, _opt("--simpo-gamma", panel=METHOD)] = None,
    train_vision: Annotated[bool, _opt("--train-vision", panel=METHOD)] = False,
    suffix: Annotated[str | None, _opt("--suffix", panel=OUTPUT, help="Part of the output model name.")] = None,
    random_seed: Annotated[int | None, _opt("--random-seed", panel=OUTPUT)] = None,
    priority: Annotated[int, _opt("--priority", panel=OUTPUT, help="Higher runs first (tunery only).")] = 0,
    wandb_api_key: Annotated[str | None, _opt("--wandb-api-key", panel=OUTPUT)] = None,
    wandb_base_url: Annotated[str | None, _opt("--wandb-base-url", panel=OUTPUT)] = None,
    wandb_project_name: Annotated[str | None, _opt("--wandb-project-name", panel=OUTPUT)] = None,
    wandb_name: Annotated[str | None, _opt("--wandb-name", panel=OUTPUT)] = None,
    wandb_entity: Annotated[str | None, _opt("--wandb-entity", panel=OUTPUT)] = None,
    early_stopping_enabled: Annotated[bool, _opt("--early-stopping-enabled", panel=EARLY)] = False,
    early_stopping_patience: Annotated[int | None, _opt("--early-stopping-patience", panel=EARLY)] = None,
    early_stopping_min_delta: Annotated[float | None, _opt("--early-stopping-min-delta", panel=EARLY)] = None,
    early_stopping_warmup_evals: Annotated[int | None, _opt("--early-stopping-warmup-evals", panel=EARLY)] = None,
    from_hf_model: Annotated[str | None, _opt("--from-hf-model", panel=HF)] = None,
    hf_model_revision: Annotated[str | None, _opt("--hf-model-revision", panel=HF)] = None,
    hf_api_token: Annotated[str | None, _opt("--hf-api-token", panel=HF)] = None,
    hf_output_repo_name: Annotated[str | None, _opt("--hf-output-repo-name", panel=HF)] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job live until it ends.")] = False,
    json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Start a fine-tuning job."""
    flags = dict(locals())
    client = Client.connect(base_url, api_key)
    for field in ("training_file", "validation_file"):
        value = flags[field]
        if value and Path(value).is_file():
            flags[field] = upload_file(client, Path(value), show_progress=not json).file["id"]
            if not json:
                typer.echo(f"Uploaded {value} as {flags[field]}")
    job = client.post("/v1/fine-tunes", json=request_body(flags))
    if json:
        print_json(job)
    else:
        typer.echo(f"Created fine-tuning job {job['id']} ({job['status']}) → {job.get('model_output_name')}")
        if not watch:
            typer.echo(f"Follow it with: tunery fine-tuning watch {job['id']}")
    if watch:
        raise typer.Exit(watch_job(client, job["id"]))


PLAIN = ("training_file", "validation_file", "model", "from_checkpoint", "n_epochs", "n_checkpoints", "n_evals",
         "max_seq_length", "gradient_accumulation_steps", "packing", "learning_rate", "warmup_ratio",
         "max_grad_norm", "weight_decay", "suffix", "random_seed", "priority", "wandb_base_url",
         "wandb_project_name", "wandb_name", "wandb_entity", "early_stopping_enabled", "early_stopping_patience",
         "early_stopping_min_delta", "early_stopping_warmup_evals", "from_hf_model", "hf_model_revision",
         "hf_api_token", "hf_output_repo_name")


def request_body(f: dict[str, Any]) -> dict[str, Any]:
    """The JSON body for ``POST /v1/fine-tunes`` from the flag values (None = not sent)."""
    body: dict[str, Any] = {k: f[k] for k in PLAIN if f[k] is not None}
    body["batch_size"] = _batch_size(f["batch_size"])
    if f["wandb_api_key"] is not None:
        body["wandb_key"] = f["wandb_api_key"]
    args: dict[str, float] = {"min_lr_ratio": f["min_lr_ratio"]}
    if f["lr_scheduler_type"] == "cosine":
        args["num_cycles"] = f["scheduler_num_cycles"]
    body["lr_scheduler"] = {"lr_scheduler_type": f["lr_scheduler_type"], "lr_scheduler_args": args}
    training_type = _training_type(f)
    if training_type is not None:
        body["training_type"] = training_type
    body["training_method"] = _training_method(f)
    if f["train_vision"]:
        body["multimodal_params"] = {"train_vision": True}
    return body


def _batch_size(value: str) -> int | str:
    if value == "max":
        return value
    try:
        return int(value)
    except ValueError:
        raise CliError(f"--batch-size must be an integer or max; got {value!r}") from None


def _training_type(f: dict[str, Any]) -> dict[str, Any] | None:
    lora_fields = {k: f[k] for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_trainable_modules")
                   if f[k] is not None}
    if f["lora"] is False:
        if lora_fields:
            given = ", ".join("--" + k.replace("_", "-") for k in lora_fields)
            raise CliError(f"--no-lora cannot be combined with {given}")
        return {"type": "Full"}
    if f["lora"] is None and not lora_fields:
        return None  # the server's default (LoRA, or the parent job's type with --from-checkpoint)
    return {"type": "Lora", **lora_fields}


def _training_method(f: dict[str, Any]) -> dict[str, Any]:
    """SFT or DPO; DPO-only flags given with SFT are sent anyway, so the server says what is wrong."""
    method: dict[str, Any] = {"method": f["training_method"]}
    method.update({k: f[k] for k in ("dpo_beta", "rpo_alpha", "simpo_gamma") if f[k] is not None})
    for k in ("dpo_normalize_logratios_by_length", "dpo_reference_free"):
        if f[k] or f["training_method"] == "dpo":
            method[k] = f[k]
    if f["training_method"] == "dpo":
        return method
    toi = {"true": True, "false": False, "auto": "auto"}.get(f["train_on_inputs"].lower())
    if toi is None:
        raise CliError(f"--train-on-inputs must be auto, true or false; got {f['train_on_inputs']!r}")
    return {**method, "train_on_inputs": toi}
