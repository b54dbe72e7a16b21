"""score_model graders in a training job: ``ModelJudge`` runs each judge model in the training process
itself, through the inference core, from the local directory the worker resolved its name to
(``TrainConfig.judge_model_dirs``). A judge is loaded once, on first use, and kept for the run.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from tunery.graders.grading import JudgeReply
from tunery.inference.sampling import SamplingParams
from tunery.inference.scheduler import generate
from tunery.training.model import load_causal_lm, load_tokenizer


class ModelJudge:
    def __init__(self, model_dirs: dict[str, str], device: torch.device):
        self.model_dirs, self.device = model_dirs, device
        self._loaded: dict[str, tuple[Any, Any]] = {}
        # Samples are graded on several threads. Loading must happen on one at a time: transformers
        # switches the global default device to "meta" while it builds a model, and two interleaved
        # loads can leave it there for every later load in the process.
        self._loading = threading.Lock()

    def complete(self, model: str, messages: list[dict[str, str]], *, max_tokens: int, temperature: float,
                 top_p: float, seed: int | None) -> JudgeReply:
        judge, tokenizer = self._judge(model)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
        [[reply]] = generate(judge, [prompt], params, tokenizer=tokenizer)
        return JudgeReply(reply.text or "", len(reply.token_ids))

    def _judge(self, model: str) -> tuple[Any, Any]:
        with self._loading:
            return self._load(model)

    def _load(self, model: str) -> tuple[Any, Any]:
        if model not in self._loaded:
            if model not in self.model_dirs:
                raise LookupError(f"judge model {model!r} was not made available to this job")
            path = self.model_dirs[model]
            judge = load_causal_lm(path, torch.float32).to(self.device).eval().requires_grad_(False)
            self._loaded[model] = (judge, load_tokenizer(path))
        return self._loaded[model]
