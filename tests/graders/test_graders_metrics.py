"""Text metrics, formulas and templates against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from tunery.graders.formula import FormulaError, parse_formula
from tunery.graders.templates import TemplateError, render, template_paths
from tunery.graders.text_metrics import bleu, fuzzy_match, gleu, lcs_length, rouge_l, rouge_n


def test_lcs_matches_the_textbook_dynamic_programme() -> None:
    def dp(a: str, b: str) -> int:
        row = [0] * (len(b) + 1)
        for x in a:
            prev, row = row, [0]
            for j, y in enumerate(b):
                row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        return row[-1]

    for a, b in [("kitten", "sitting"), ("", "abc"), ("abcabcabc", "cbacbacba"), ("x" * 70, "x" * 65 + "y")]:
        assert lcs_length(a, b) == dp(a, b)


def test_fuzzy_match_is_the_normalised_indel_similarity() -> None:
    assert fuzzy_match("kitten", "sitting") == pytest.approx(8 / 13)  # LCS "ittn"
    assert fuzzy_match("same", "same") == 1.0 and fuzzy_match("", "") == 1.0 and fuzzy_match("ab", "") == 0.0


def test_bleu() -> None:
    ref = "the cat sat on the mat"
    assert bleu(ref, ref) == pytest.approx(1.0)
    # 1- to 4-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty
    assert bleu("the dog sat on the mat", ref) == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # three tokens: orders 1-3 only (effective order), all exact; brevity penalty exp(1 - 6/3)
    assert bleu("the cat sat", ref) == pytest.approx(math.exp(-1))
    # orders without a match are smoothed as 1 / (2^k · n-gram count)
    assert bleu("a b c d", "a x c y") == pytest.approx((2 / 4 * 1 / 6 * 1 / 8 * 1 / 8) ** 0.25)


def test_gleu_is_the_smaller_of_ngram_precision_and_recall() -> None:
    assert gleu("the cat sat", "the cat sat on the mat") == pytest.approx(6 / 18)


def test_rouge() -> None:
    assert rouge_n("The cat sat.", "the cat sat on the mat", 1) == pytest.approx(2 / 3)  # P 1, R 1/2
    assert rouge_n("The cat sat.", "the cat sat on the mat", 2) == pytest.approx(2 * 0.4 / 1.4)  # P 1, R 2/5
    assert rouge_n("mat the cat", "the cat on the mat", 1) == pytest.approx(0.75)  # P 1, R 3/5
    assert rouge_l("mat the cat", "the cat on the mat") == pytest.approx(0.5)  # LCS "the cat": P 2/3, R 2/5
    assert rouge_n("a", "b", 5) == 0.0


def test_formula_arithmetic_functions_and_power() -> None:
    f = parse_formula("0.5 * exact + 0.5 * sim ^ 2")
    assert f.names == {"exact", "sim"}
    assert f.evaluate({"exact": 1.0, "sim": 0.5}) == pytest.approx(0.625)
    g = parse_formula("min(a, b) + max(a, b, 0.9) - abs(-a) + floor(1.7) + ceil(0.2) + sqrt(4) + log(exp(1))")
    assert g.evaluate({"a": 0.25, "b": 0.75}) == pytest.approx(0.25 + 0.9 - 0.25 + 1 + 1 + 2 + 1)


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "a.real", "a if b else c", "(lambda: 1)()",
                                  "[a][0]", "a < b", "open('x')", "max(a, key=b)", "'text'", "a; b", "abs(a, b)"])
def test_formula_refuses_anything_but_arithmetic(text: str) -> None:
    with pytest.raises(FormulaError):
        parse_formula(text)


@pytest.mark.parametrize("text", ["9 ^ 9 ^ 9", "a / 0", "sqrt(-1)", "log(0)", "(-8) ^ (1 / 3)"])
def test_formula_failures_while_computing_are_formula_errors(text: str) -> None:
    with pytest.raises(FormulaError):
        parse_formula(text).evaluate({"a": 1.0})


def test_templates() -> None:
    spaces = {"item": {"answer": "4", "meta": {"tags": ["x", "y"]}, "n": 3},
              "sample": {"output_text": "four", "output_json": {"a": [1, 2]}}}
    assert render("{{item.answer}}={{ sample.output_text }}", spaces) == "4=four"
    assert render("{{ item.meta.tags[1] }} {{ item.n }} {{ sample.output_json }}", spaces) == 'y 3 {"a": [1, 2]}'
    assert render("{{ sample.output_json.a[-1] }}", spaces) == "2"
    with pytest.raises(TemplateError, match=r"item.meta has no .tag"):
        render("{{ item.meta.tag }}", spaces)
    with pytest.raises(TemplateError, match="item or sample namespace"):
        template_paths("{{ answer }}")
    with pytest.raises(TemplateError, match="name a variable"):
        template_paths("{{ item }}")
