"""Exact-match accuracy of a model directory on question → answer pairs, with greedy generation
through the model's own chat template (the way a user would call the fine-tuned model).

    from tunery.quickstart.evaluate import exact_match
    result = exact_match(Path("model_dir"), pairs)   # result.accuracy, result.samples
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunery.quickstart.data import conversation

MAX_NEW_TOKENS = 12
BATCH = 64


@dataclass(frozen=True)
class Sample:
    question: str
    expected: str
    got: str

    @property
    def correct(self) -> bool:
        return self.got == self.expected


@dataclass(frozen=True)
class EvalResult:
    samples: list[Sample]

    @property
    def correct(self) -> int:
        return sum(s.correct for s in self.samples)

    @property
    def accuracy(self) -> float:
        return self.correct / len(self.samples) if self.samples else 0.0


def exact_match(model_dir: Path, pairs: list[tuple[str, str]], threads: int | None = 1) -> EvalResult:
    """Answer every question greedily and compare the stripped answer with the expected one.

    ``threads`` sets torch's intra-op threads (None: leave as is). One suits tiny models: their ops
    are too small to split, and on a busy CPU extra threads made generation many times slower.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if threads is not None:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    samples: list[Sample] = []
    for start in range(0, len(pairs), BATCH):
        chunk = pairs[start : start + BATCH]
        prompts = [tokenizer.apply_chat_template(conversation(q), tokenize=False, add_generation_prompt=True)
                   for q, _ in chunk]
        # The template already writes the BOS token.
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        answers = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        samples += [Sample(q, a, got.strip()) for (q, a), got in zip(chunk, answers, strict=True)]
    return EvalResult(samples)
