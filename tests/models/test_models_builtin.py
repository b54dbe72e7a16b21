from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tests.sample_images import solid_url
from tunery.models.builtin import BUILTINS, BuiltinSpec, ensure_builtin


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_build_is_deterministic_atomic_and_cached(tmp_path: Path) -> None:
    first = ensure_builtin("tunery/tiny-llama", tmp_path / "a")
    second = ensure_builtin("tunery/tiny-llama", tmp_path / "b")
    assert digests(first) == digests(second)
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(digests(first))
    assert [p.name for p in (tmp_path / "a").iterdir()] == [first.name]  # no temporary left behind
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_builtin("tunery/tiny-llama", tmp_path / "a") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt


def test_tiny_vlm_build_is_deterministic(tmp_path: Path) -> None:
    first = ensure_builtin("tunery/tiny-vlm", tmp_path / "a")
    assert digests(first) == digests(ensure_builtin("tunery/tiny-vlm", tmp_path / "b"))
    assert {"config.json", "model.safetensors", "processor_config.json", "chat_template.jinja"} <= set(digests(first))


def test_tiny_vlm_loads_with_auto_classes_and_sees_the_image(tiny_vlm: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm)
    processor = AutoProcessor.from_pretrained(tiny_vlm)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"  # no torchvision needed
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
    # OpenAI-style parts, as in datasets and chat requests; any size becomes 32x32, 16 image tokens.
    inputs = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": solid_url(colour, (40, 24))}},
                                      {"type": "text", "text": "Colour?"}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt") for colour in
        ((255, 0, 0), (0, 0, 255))]
    assert inputs[0]["pixel_values"].shape == (1, 3, 32, 32)
    assert int((inputs[0]["input_ids"] == model.config.image_token_id).sum()) == 16
    assert torch.equal(inputs[0]["input_ids"], inputs[1]["input_ids"])
    with torch.no_grad():
        red, blue = (model(**i).logits[0, -1] for i in inputs)
    assert not torch.allclose(red, blue)  # the answer depends on the pixels
    out = model.generate(**inputs[0], max_new_tokens=3)
    assert out.shape[1] > inputs[0]["input_ids"].shape[1]


def test_tiny_llama_loads_with_auto_classes_and_generates(tiny_llama: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
    assert 256 < len(tokenizer) <= 2048 and model.config.vocab_size == len(tokenizer)
    assert model.config.max_position_embeddings == 1024
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|startoftext|>", "<|endoftext|>", "<|pad|>")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0] == tokenizer.bos_token_id
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4) or tokenizer.convert_ids_to_tokens(int(out[0, -1])) in (
        "<|im_end|>", "<|endoftext|>")


def test_tokenizer_round_trips_any_text(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    text = "Zürich — 東京 🚀 {\"a\": [1, 2]}\n\ttabs"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text


def test_chat_template_renders_every_role_and_the_generation_prompt(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "w", "arguments": {}}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|startoftext|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>{"name": "w", "arguments": {}}</tool_call><|im_end|>\n'
        "<|im_start|>tool\nsunny<|im_end|>\n<|im_start|>assistant\nSunny.<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 5  # markers are single tokens


def test_small_llama_is_about_30m_parameters(tiny_llama: Path) -> None:
    from transformers import LlamaConfig

    spec = BUILTINS["tunery/small-llama"]
    assert isinstance(spec, BuiltinSpec)
    tiny = AutoConfig.from_pretrained(tiny_llama)
    config = LlamaConfig(vocab_size=tiny.vocab_size, hidden_size=spec.hidden_size,
                         intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
                         num_attention_heads=spec.num_attention_heads, tie_word_embeddings=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert 25e6 < sum(p.numel() for p in model.parameters()) < 35e6
