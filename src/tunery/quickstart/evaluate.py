"""Exact-match accuracy of a model on question → answer pairs, asked the way a user calls it: a chat
(the model's own template) answered greedily — by the server's inference engine in `tunery quickstart`.

    from tunery.quickstart.evaluate import exact_match
    result = exact_match(ask, pairs)   # ask(messages) -> reply; result.accuracy, result.samples
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tunery.quickstart.data import conversation

MAX_NEW_TOKENS = 12


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


def exact_match(answer: Callable[[list[dict[str, str]]], str], pairs: list[tuple[str, str]],
                concurrency: int = 16) -> EvalResult:
    """Ask every question (``answer`` turns a conversation into the model's reply, greedily) and compare
    the stripped answer with the expected one. Questions go ``concurrency`` at a time: the serving engine
    batches them."""
    with ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(lambda qa: answer(conversation(qa[0])), pairs))
    return EvalResult([Sample(q, a, got.strip()) for (q, a), got in zip(pairs, replies, strict=True)])
