"""The in-process core: continuous batching over one model object.

Greedy tokens must equal ``transformers`` ``generate`` on the same weights whether a request runs alone,
in a batch, or joins a batch that is already decoding; LoRA rows over one base must equal ``generate``
on each merged model; seeds make sampling reproducible whatever shares the batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.inference.conftest import load_model, merged
from tunery.inference.sampling import SamplingParams
from tunery.inference.scheduler import Request, Scheduler, TokenEvent, generate

QUESTIONS = ["What is the capital of France?", "Hi", "Tell me about the cat that sat on the mat, and the dog.",
             "How many days are in a week?"]
GREEDY = SamplingParams(max_tokens=16, temperature=0)


def chat_ids(tokenizer: Any, question: str) -> list[int]:
    return list(tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                              tokenize=True)["input_ids"])


def reference(model: Any, prompt: list[int], max_new_tokens: int = 16) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False)
    return list(out[0, len(prompt):].tolist())


def run(scheduler: Scheduler, requests: list[Request], join_every: int = 0) -> dict[int, list[TokenEvent]]:
    """Step until done; with ``join_every`` > 0 the requests arrive that many steps apart."""
    events: dict[int, list[TokenEvent]] = {r.id: [] for r in requests}
    pending = list(requests)
    step = 0
    while pending or scheduler.has_work():
        if pending and (join_every == 0 or step % join_every == 0):
            for r in pending if join_every == 0 else pending[:1]:
                scheduler.add(r)
            pending = [] if join_every == 0 else pending[1:]
        for e in scheduler.step():
            events[e.request.id].append(e)
        step += 1
    return events


@pytest.fixture(scope="module")
def model(tiny_llama: Path) -> Any:
    return load_model(tiny_llama)


@pytest.fixture(scope="module")
def prompts(tokenizer: Any) -> list[list[int]]:
    return [chat_ids(tokenizer, q) for q in QUESTIONS]


def test_greedy_tokens_equal_generate_alone_batched_and_joining(model: Any, tokenizer: Any,
                                                                 prompts: list[list[int]]) -> None:
    refs = [reference(model, p) for p in prompts]
    alone = [generate(model, [p], GREEDY, tokenizer=tokenizer)[0][0] for p in prompts]
    assert [g.token_ids for g in alone] == refs
    together = generate(model, prompts, GREEDY, tokenizer=tokenizer)
    assert [g[0].token_ids for g in together] == refs
    # Each request joins two steps after the one before, while the others are decoding.
    requests = [Request(p, GREEDY) for p in prompts]
    events = run(Scheduler(model, tokenizer), requests, join_every=2)
    assert [[e.token_id for e in events[r.id]] for r in requests] == refs
    # The text is the tokens decoded, and only the last event of a sequence finishes it.
    for r, ref in zip(requests, refs, strict=True):
        seq = events[r.id]
        assert "".join(e.text for e in seq) == tokenizer.decode(ref, skip_special_tokens=True)
        assert [e.finish_reason is not None for e in seq] == [False] * (len(seq) - 1) + [True]
        eos = ref[-1] in model.generation_config.eos_token_id
        assert seq[-1].finish_reason == ("stop" if eos else "length")


def test_lora_rows_over_one_base_equal_each_merged_model(tiny_llama: Path, adapters: tuple[Path, Path],
                                                         tokenizer: Any, prompts: list[list[int]]) -> None:
    from peft import PeftModel

    a, b = adapters
    served = PeftModel.from_pretrained(load_model(tiny_llama), str(a), adapter_name="a")
    served.load_adapter(str(b), adapter_name="b")
    served.eval()
    base = load_model(tiny_llama)
    expected = {"a": merged(tiny_llama, a), "b": merged(tiny_llama, b), "__base__": base}
    plan = [("a", prompts[0]), ("b", prompts[0]), ("__base__", prompts[1]), ("b", prompts[2]), ("a", prompts[3])]
    requests = [Request(p, GREEDY, adapter=name) for name, p in plan]
    events = run(Scheduler(served, tokenizer), requests, join_every=3)
    got = [[e.token_id for e in events[r.id]] for r in requests]
    want = [reference(expected[name], p) for name, p in plan]
    assert got == want
    assert want[0] != want[1]  # the adapters really differ from each other


def test_seeded_sampling_is_reproducible_and_choices_differ(model: Any, tokenizer: Any,
                                                            prompts: list[list[int]]) -> None:
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=7, n=3, ignore_eos=True)
    alone = generate(model, [prompts[0]], params)[0]
    crowded = generate(model, [prompts[1], prompts[0], prompts[2]], [GREEDY, params, params])[1]
    assert [g.token_ids for g in alone] == [g.token_ids for g in crowded]
    assert len({tuple(g.token_ids) for g in alone}) == 3
    assert all(len(g.token_ids) == 12 and g.finish_reason == "length" for g in alone)


def test_stop_strings_cut_the_text_and_logprobs_are_the_models(model: Any, tokenizer: Any,
                                                               prompts: list[list[int]]) -> None:
    free = generate(model, [prompts[2]], SamplingParams(max_tokens=16, temperature=0, ignore_eos=True),
                    tokenizer=tokenizer)[0][0]
    assert free.text is not None and len(free.text) > 6
    stop = free.text[3:6]
    cut = generate(model, [prompts[2]], SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, stop=(stop,),
                                                       logprobs=2), tokenizer=tokenizer)[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)]
    assert cut.token_ids == free.token_ids[: len(cut.token_ids)]
    with torch.no_grad():
        logits = model(torch.tensor([prompts[2] + cut.token_ids])).logits[0, len(prompts[2]) - 1 : -1]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(cut.token_ids)[:, None]).squeeze(1)
    assert cut.logprobs == pytest.approx(expected.tolist(), abs=1e-4)


def test_cancel_and_max_tokens_one(model: Any, prompts: list[list[int]]) -> None:
    scheduler = Scheduler(model)
    doomed = Request(prompts[0], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
    short = Request(prompts[1], SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    scheduler.add(doomed)
    scheduler.add(short)
    first = scheduler.step()
    assert [e.finish_reason for e in first if e.request is short] == ["length"]
    scheduler.cancel(doomed)
    assert scheduler.step() == [] and not scheduler.has_work()
