"""Load the model and tokenizer to train, with LoRA (peft) or for full fine-tuning.

Where the weights come from, in order: ``resume_from`` (this job's checkpoint: its ``adapter/`` for
LoRA, its ``model/`` for full), ``init_from`` (an adapter dir continues that adapter; a model dir
becomes the base), else ``base_model_dir``. Precision (``precision``, see ``autocast_dtype_for``): in
bf16 mixed precision LoRA keeps the frozen base in bf16 and the adapters in fp32, full fine-tuning
keeps fp32 weights, and both run the forward pass under bf16 autocast; in fp32, everything is fp32.

A vision-language model loads with ``AutoModelForImageTextToText`` and its processor; ``train_vision``
decides whether its vision part trains (see ``vision.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from tunery.errors import TrainingFailed
from tunery.models.architecture import auto_model_class, is_vision_language
from tunery.models.processor import load_processor
from tunery.training import attention, fsdp
from tunery.training.attention import Segments
from tunery.training.config import TrainConfig
from tunery.training.data.images import ImageInputs, image_inputs
from tunery.training.distributed import Dist, shards
from tunery.training.fused_lora import fuse_lora_layers
from tunery.training.logprobs import TargetLogps
from tunery.training.vision import freeze_vision, lora_targets

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
    # What syncs gradients across ranks in several processes: a DistributedDataParallel over
    # ``scorer``, or ``scorer`` itself once sharded (FSDP2, see ``fsdp.py``); None in one process.
    parallel: Any = None
    processor: Any = None  # a vision-language model's AutoProcessor (its tokenizer is ``tokenizer``)
    processor_dir: Path | None = None  # the directory the processor's files come from
    scorer: TargetLogps = field(init=False)  # ``model`` as batch -> target log-probabilities
    images: ImageInputs | None = field(init=False)  # what collating images needs, for a vision-language model

    def __post_init__(self) -> None:
        self.scorer = TargetLogps(self.model)
        self.images = image_inputs(self.processor, self.model)

    @property
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    @property
    def sharded(self) -> bool:
        return fsdp.is_sharded(self.parallel)


def pick_device(preference: str) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_dtype_for(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 when ``precision`` says so, or for ``auto`` where the device multiplies bf16 natively: CUDA
    GPUs with bf16, and CPUs with AVX512-BF16 or AMX (on the 2-core Zen 4 box a bf16 GEMM ran 2.4x
    fp32's and a small-llama LoRA step 2x; without those instructions bf16 is emulated, far slower
    than fp32). None means fp32."""
    if precision == "bf16" or (precision == "auto" and _native_bf16(device)):
        return torch.bfloat16
    return None


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


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
    """A text model, or a vision-language model (whose language model is the causal LM)."""
    from transformers import AutoConfig

    attention.register()
    config = AutoConfig.from_pretrained(model_dir)
    return auto_model_class(config).from_pretrained(model_dir, dtype=dtype, attn_implementation=_attention(config))


def _attention(config: Any) -> str | dict[str, str]:
    """``ATTN_IMPLEMENTATION`` for the language model. A vision-language model's other parts (its vision
    tower) keep their default attention: the segments that keep packed examples apart are positions in
    the token rows, which mean nothing to image patches."""
    if not is_vision_language(config):
        return ATTN_IMPLEMENTATION
    return {"": ATTN_IMPLEMENTATION, "text_config": ATTN_IMPLEMENTATION}


def load_for_training(cfg: TrainConfig, dist: Dist | None = None) -> LoadedModel:
    """Build the model to train from ``cfg``; call after seeding (LoRA init draws random numbers).
    In several processes (``dist``) that shard the model (``distributed.shards``), every rank builds
    it in host memory and keeps its shard on the device."""
    device = pick_device(cfg.device)
    bf16 = autocast_dtype_for(device, cfg.precision) == torch.bfloat16
    is_lora = cfg.lora is not None
    init_adapter = cfg.init_from is not None and is_adapter_dir(cfg.init_from)
    base_dir = Path(cfg.init_from if cfg.init_from and not init_adapter else cfg.base_model_dir)
    if cfg.resume_from and not is_lora:
        base_dir = Path(cfg.resume_from) / "model"
    base_dtype = torch.bfloat16 if (bf16 and is_lora) else torch.float32
    model = load_causal_lm(base_dir, base_dtype)
    param_count = sum(p.numel() for p in model.parameters())
    processor = load_processor(cfg.base_model_dir)
    if cfg.train_vision and processor is None:
        raise TrainingFailed("train_vision needs a vision-language model; this one is text-only", user_error=True)
    adapter = _adapter_to_continue(cfg, init_adapter)
    if is_lora:
        model = _with_lora(model, cfg, adapter, vision=processor is not None)
    elif adapter is not None:  # full training from a LoRA export: fold the adapter in first
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    if processor is not None and not is_lora and not cfg.train_vision:
        freeze_vision(model)
    model.config.use_cache = False
    sharded = dist is not None and shards(cfg, dist.world)
    if not sharded:
        model.to(device)
    model.train()
    loaded = LoadedModel(
        model=model,
        tokenizer=processor.tokenizer if processor is not None else load_tokenizer(cfg.base_model_dir),
        base_dir=base_dir,
        is_lora=is_lora,
        device=device,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        param_count=param_count,
        processor=processor,
        processor_dir=Path(cfg.base_model_dir) if processor is not None else None,
    )
    if sharded:
        assert dist is not None
        fsdp.shard(loaded.scorer, model, dist.device, dist.world, loaded.autocast_dtype)
        loaded.parallel = loaded.scorer
    return loaded


def _adapter_to_continue(cfg: TrainConfig, init_adapter: bool) -> Path | None:
    if cfg.resume_from and cfg.lora is not None:
        return Path(cfg.resume_from) / "adapter"
    if init_adapter and not cfg.resume_from:
        return Path(str(cfg.init_from))
    return None


def _with_lora(model: Any, cfg: TrainConfig, adapter: Path | None, vision: bool = False) -> Any:
    """LoRA on ``cfg.lora.target_modules``; on a vision-language model (``vision``) those of its
    language model, and of its vision part too with ``train_vision``."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        fuse_lora_layers(model)
        return model
    assert cfg.lora is not None
    targets = lora_targets(model, cfg.lora.target_modules, cfg.train_vision) if vision else cfg.lora.target_modules
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cast(int, cfg.lora.lora_alpha),  # annotated int; any positive number works
        lora_dropout=cfg.lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    fuse_lora_layers(model)
    return model


def forward_logps(
    loaded: LoadedModel, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
    bias: torch.Tensor | Segments, temperature: float = 1.0, /, **inputs: Any
) -> torch.Tensor:
    """``[B, L]`` fp32 log-probabilities of ``targets`` (0 where ``IGNORE``), under autocast where
    configured, without the full logits (see ``logprobs.py``), of the logits over ``temperature``.
    ``bias`` keeps packed examples apart: a 4-D additive mask, or ``Segments`` (see
    ``attention.attention_for``); ``inputs`` go to the model as they are. Passes that build a graph go
    through ``parallel`` when there is one, so their backward averages gradients across ranks."""
    logps: torch.Tensor = _score(loaded, input_ids, position_ids, targets, bias, temperature, False, inputs)
    return logps


def forward_logps_and_hits(
    loaded: LoadedModel, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
    bias: torch.Tensor | Segments, /, **inputs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward_logps``, and ``[B, L]`` whether each target was the model's top guess (False where
    ``IGNORE``): token accuracy, for the same pass."""
    logps, hits = _score(loaded, input_ids, position_ids, targets, bias, 1.0, True, inputs)
    return logps, hits


def _score(loaded: LoadedModel, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
           bias: torch.Tensor | Segments, temperature: float, hits: bool, inputs: dict[str, Any]) -> Any:
    module = loaded.parallel if loaded.parallel is not None and torch.is_grad_enabled() else loaded.scorer
    isolation = {"packed_segments": bias} if isinstance(bias, Segments) else {"attention_mask": bias}
    with torch.autocast(loaded.device.type, dtype=loaded.autocast_dtype or torch.float32,
                        enabled=loaded.autocast_dtype is not None):
        return module(input_ids, position_ids, targets, temperature, hits, **isolation, **inputs)


def mask_dtype(loaded: LoadedModel) -> torch.dtype:
    """The dtype attention runs in, which the additive mask must match."""
    if loaded.autocast_dtype is not None:
        return loaded.autocast_dtype
    return next(loaded.model.parameters()).dtype
