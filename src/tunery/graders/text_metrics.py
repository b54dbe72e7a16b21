"""The text_similarity grader's metrics, each a score in [0, 1] (1: identical):

    fuzzy_match  normalised Indel similarity of the characters, 2·LCS / (|a| + |b|) (rapidfuzz's ``ratio``)
    bleu         sentence BLEU-4 on whitespace tokens, as sacreBLEU's ``sentence_bleu``: clipped n-gram
                 precisions, brevity penalty, "exp" smoothing of orders with no match, effective order
    gleu         Google-BLEU: min(precision, recall) over all 1- to 4-grams (as NLTK's ``sentence_gleu``)
    rouge_N      ROUGE-N F1 (N = 1..5) and rouge_l: ROUGE-L F1 from the longest common subsequence, on
                 lowercased alphanumeric tokens (as Google's ``rouge-score`` without stemming)

Longest common subsequences use the bit-parallel algorithm (Hyyrö 2004) on Python integers: one
pass over one sequence, with word-wide operations over the other.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Sequence

_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    if not a or not b:
        return 0
    masks: dict[Hashable, int] = {}
    for i, x in enumerate(a):
        masks[x] = masks.get(x, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for y in b:
        m = masks.get(y, 0)
        u = v & m
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def fuzzy_match(text: str, reference: str) -> float:
    if not text and not reference:
        return 1.0
    return 2 * lcs_length(text, reference) / (len(text) + len(reference))


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(text: str, reference: str, max_order: int = 4) -> float:
    hyp, ref = text.split(), reference.split()
    if not hyp or not ref:
        return float(hyp == ref)
    log_sum, orders, zeros = 0.0, 0, 0
    for n in range(1, max_order + 1):
        total = max(len(hyp) - n + 1, 0)
        if total == 0:
            break  # effective order: only the orders the hypothesis has n-grams of
        matches = sum((_ngrams(hyp, n) & _ngrams(ref, n)).values())
        if matches == 0:
            zeros += 1
            precision = 1.0 / (2**zeros * total)
        else:
            precision = matches / total
        log_sum += math.log(precision)
        orders += 1
    brevity = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return brevity * math.exp(log_sum / orders)


def gleu(text: str, reference: str, max_order: int = 4) -> float:
    hyp, ref = text.split(), reference.split()
    hyp_grams: Counter[tuple[str, ...]] = Counter()
    ref_grams: Counter[tuple[str, ...]] = Counter()
    for n in range(1, max_order + 1):
        hyp_grams += _ngrams(hyp, n)
        ref_grams += _ngrams(ref, n)
    total_hyp, total_ref = sum(hyp_grams.values()), sum(ref_grams.values())
    if total_hyp == 0 or total_ref == 0:
        return 0.0
    matches = sum((hyp_grams & ref_grams).values())
    return min(matches / total_hyp, matches / total_ref)


def rouge_tokens(text: str) -> list[str]:
    return _ROUGE_TOKEN.findall(text.lower())


def _f1(overlap: int, hyp_count: int, ref_count: int) -> float:
    if overlap == 0 or hyp_count == 0 or ref_count == 0:
        return 0.0
    precision, recall = overlap / hyp_count, overlap / ref_count
    return 2 * precision * recall / (precision + recall)


def rouge_n(text: str, reference: str, n: int) -> float:
    hyp, ref = _ngrams(rouge_tokens(text), n), _ngrams(rouge_tokens(reference), n)
    return _f1(sum((hyp & ref).values()), sum(hyp.values()), sum(ref.values()))


def rouge_l(text: str, reference: str) -> float:
    hyp, ref = rouge_tokens(text), rouge_tokens(reference)
    return _f1(lcs_length(ref, hyp), len(hyp), len(ref))


def similarity(metric: str, text: str, reference: str) -> float:
    """The named metric (every one but cosine, which needs an embedding model)."""
    if metric == "fuzzy_match":
        return fuzzy_match(text, reference)
    if metric == "bleu":
        return bleu(text, reference)
    if metric == "gleu":
        return gleu(text, reference)
    if metric == "rouge_l":
        return rouge_l(text, reference)
    if metric.startswith("rouge_"):
        return rouge_n(text, reference, int(metric.removeprefix("rouge_")))
    raise ValueError(f"no text metric named {metric!r}")
