"""Load the model and tokenizer to train, with LoRA (peft) or for full fine-tuning.

Where the weights come from, in order: ``resume_from`` (this job's checkpoint: its ``adapter/`` for
LoRA, its ``model/`` for full), ``init_from`` (an adapter dir continues that adapter; a model dir
becomes the base), else ``base_model_dir``. Precision: fp32 on CPU (bf16 matmuls are far slower
there); on CUDA with bf16 support, LoRA keeps the frozen base in bf16 and the adapters in fp32,
full fine-tuning keeps fp32 weights, and both run the forward pass under bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from tunery.training import attention
from tunery.training.attention import Segments
from tunery.training.config import TrainConfig
from tunery.training.logprobs import TargetLogps

ATTN_IMPLEMENTATION = attention.PACKED  # SDPA, plus per-example attention for wide packed rows


@dataclass
class LoadedModel:
    model: Any  # a PeftModel for LoRA, else the transformers model
    tokenizer: Any
    base_dir: Path  # the weights LoRA adapts (what an adapter is merged into)
    is_lora: bool
    device: torch.device
    autocast_dtype: torch.dtype | None
    param_count: int  # parameters of the underlying model, adapters excluded
    ddp: Any = None  # DistributedDataParallel over ``scorer`` when training in several processes
    scorer: TargetLogps = field(init=False)  # ``model`` as batch -> target log-probabilities

    def __post_init__(self) -> None:
        self.scorer = TargetLogps(self.model)

    @property
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


def pick_device(preference: str) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template:
        # A base model without one still trains on conversations, with the built-in models'
        # ChatML-like template; the exported tokenizer carries it, so inference renders the same.
        from tunery.models.builtin import CHAT_TEMPLATE

        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is never attended to nor trained
    return tokenizer


def load_causal_lm(model_dir: str | Path, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    attention.register()
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION)


def load_for_training(cfg: TrainConfig) -> LoadedModel:
    """Build the model to train from ``cfg``; call after seeding (LoRA init draws random numbers)."""
    device = pick_device(cfg.device)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    is_lora = cfg.lora is not None
    init_adapter = cfg.init_from is not None and is_adapter_dir(cfg.init_from)
    base_dir = Path(cfg.init_from if cfg.init_from and not init_adapter else cfg.base_model_dir)
    if cfg.resume_from and not is_lora:
        base_dir = Path(cfg.resume_from) / "model"
    base_dtype = torch.bfloat16 if (bf16 and is_lora) else torch.float32
    model = load_causal_lm(base_dir, base_dtype)
    param_count = sum(p.numel() for p in model.parameters())
    adapter = _adapter_to_continue(cfg, init_adapter)
    if is_lora:
        model = _with_lora(model, cfg, adapter)
    elif adapter is not None:  # full training from a LoRA export: fold the adapter in first
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.config.use_cache = False
    model.to(device)
    model.train()
    return LoadedModel(
        model=model,
        tokenizer=load_tokenizer(cfg.base_model_dir),
        base_dir=base_dir,
        is_lora=is_lora,
        device=device,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        param_count=param_count,
    )


def _adapter_to_continue(cfg: TrainConfig, init_adapter: bool) -> Path | None:
    if cfg.resume_from and cfg.lora is not None:
        return Path(cfg.resume_from) / "adapter"
    if init_adapter and not cfg.resume_from:
        return Path(str(cfg.init_from))
    return None


def _with_lora(model: Any, cfg: TrainConfig, adapter: Path | None) -> Any:
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter is not None:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    assert cfg.lora is not None
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cast(int, cfg.lora.lora_alpha),  # annotated int; any positive number works
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def forward_logps(
    loaded: LoadedModel, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
    bias: torch.Tensor | Segments, **inputs: Any
) -> torch.Tensor:
    """``[B, L]`` fp32 log-probabilities of ``targets`` (0 where ``IGNORE``), under autocast where
    configured, without the full logits (see ``logprobs.py``). ``bias`` keeps packed examples apart:
    a 4-D additive mask, or ``Segments`` (see ``attention.attention_for``); ``inputs`` go to the model
    as they are. Passes that build a graph go through ``ddp`` when there is one, so their backward
    averages gradients across ranks."""
    module = loaded.ddp if loaded.ddp is not None and torch.is_grad_enabled() else loaded.scorer
    isolation = {"packed_segments": bias} if isinstance(bias, Segments) else {"attention_mask": bias}
    with torch.autocast(loaded.device.type, dtype=loaded.autocast_dtype or torch.float32,
                        enabled=loaded.autocast_dtype is not None):
        logps: torch.Tensor = module(input_ids, position_ids, targets, **isolation, **inputs)
    return logps


def mask_dtype(loaded: LoadedModel) -> torch.dtype:
    """The dtype attention runs in, which the additive mask must match."""
    if loaded.autocast_dtype is not None:
        return loaded.autocast_dtype
    return next(loaded.model.parameters()).dtype
