"""Built-in base models, created locally on first use: no network, a few seconds, deterministic.

``tunery/tiny-llama`` (about 1M parameters) and ``tunery/small-llama`` (about 30M) are randomly
initialised ``LlamaForCausalLM`` models with a fixed seed and a byte-level BPE tokenizer trained on
the fixed corpus in ``corpus.py``. They know nothing; they exist so that the whole product (upload,
train, checkpoint, export, download) runs on any laptop and in the tests. Each is saved as a normal
Hugging Face directory that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load. ``tunery/tiny-vlm`` is their vision-language sibling (a tiny
LLaVA, see ``tiny_vlm.py``), loaded with ``AutoModelForImageTextToText`` and ``AutoProcessor``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tunery.models.corpus import CORPUS
from tunery.models.tiny_vlm import IMAGE_TOKEN, build_vlm

# Bump when the corpus, the template or a shape changes: the cache keeps one directory per version.
BUILD_VERSION = 2
SEED = 0

PAD, BOS, EOS, IM_START, IM_END = "<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END]
TOKENIZER_VOCAB_SIZE = 1024

# ChatML-like. Written with explicit "\n" strings because transformers renders templates with
# trim_blocks/lstrip_blocks, which would otherwise eat the newlines between turns. An image part
# (OpenAI's image_url, or transformers' image) renders as the <image> token that the tiny VLM's
# processor expands into one token per image patch.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\nYou can call these tools:\\n' -}}"
    "{%- for tool in tools -%}{{- tool | tojson -}}{{- '\\n' -}}{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- set reasoning = message.get('reasoning') or message.get('reasoning_content') -%}"
    "{%- if reasoning -%}{{- '<think>' + reasoning + '</think>\\n' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- elif message['content'] -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- elif part['type'] in ('image', 'image_url') -%}{{- '<image>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{{- '<tool_call>' -}}{{- call.get('function', call) | tojson -}}{{- '</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class BuiltinSpec:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int


@dataclass(frozen=True)
class VisionSpec:
    """A vision-language built-in: a language model like ``text`` and a CLIP vision tower."""

    text: BuiltinSpec
    image_size: int
    patch_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int


TINY = BuiltinSpec(128, 352, 4, 4, 1024)
BUILTINS: dict[str, BuiltinSpec | VisionSpec] = {
    "tunery/tiny-llama": TINY,
    "tunery/small-llama": BuiltinSpec(512, 1376, 9, 8, 2048),
    # 32x32 images in 8x8 patches: 16 image tokens each; a 2-layer, 64-wide CLIP tower.
    "tunery/tiny-vlm": VisionSpec(TINY, image_size=32, patch_size=8, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=2),
}


def ensure_builtin(name: str, cache_dir: str | os.PathLike[str]) -> Path:
    """Return the directory of built-in model ``name`` under ``cache_dir``, building it if missing.

    The build happens in a temporary sibling directory that is renamed into place, so a reader
    never sees a half-written model; two processes racing to build both succeed. Raises
    ``KeyError`` for a name that is not built in.
    """
    spec = BUILTINS[name]
    cache = Path(cache_dir)
    target = cache / f"{name.replace('/', '--')}--v{BUILD_VERSION}"
    if (target / "config.json").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-", dir=cache))
    try:
        _build(spec, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
            # Another process finished first; its build is identical.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tokenizer(max_length: int, extra_special_tokens: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on the fixed corpus and wrap it with specials and the chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS + list(extra_special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer)
    # Plain tokenizer(text) calls start with BOS, like Llama's; the chat template writes its own.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END, *extra_special_tokens],
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )


def _build(spec: BuiltinSpec | VisionSpec, out: Path) -> None:
    text = spec.text if isinstance(spec, VisionSpec) else spec
    extra = (IMAGE_TOKEN,) if isinstance(spec, VisionSpec) else ()
    tokenizer = build_tokenizer(text.max_position_embeddings, extra_special_tokens=extra)
    ids = {t: tokenizer.get_vocab()[t] for t in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_attention_heads,
        max_position_embeddings=text.max_position_embeddings,
        tie_word_embeddings=True,
        # 1/sqrt(hidden), not Llama's 0.02: with a frozen tied head that small, logits could never
        # exceed a few units and LoRA alone could not make the model confident (it plateaus near
        # loss 4). At this scale a LoRA run memorises a few hundred short answers in a minute.
        initializer_range=round(text.hidden_size**-0.5, 4),
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
    )
    generation = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=[ids[IM_END], ids[EOS]],  # chat turns end with <|im_end|>, plain text with EOS
        pad_token_id=ids[PAD],
        do_sample=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        if isinstance(spec, VisionSpec):
            build_vlm(spec, config, tokenizer, generation, out)
            return
        model = LlamaForCausalLM(config)
    model.generation_config = generation
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
