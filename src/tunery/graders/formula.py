"""A multi grader's ``calculate_output``: arithmetic over the named graders' scores, evaluated without
``eval``. The text is parsed into Python's syntax tree and only these nodes are accepted:

    numbers, grader names, + - * / ^ (power; ** too), unary -, parentheses,
    min(a, b, ...), max(a, b, ...), abs, floor, ceil, exp, sqrt, log (natural)

Every value is a float (so ``9 ^ 9 ^ 9`` overflows at once rather than building a huge integer).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

MAX_LENGTH = 2000
FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
    "sqrt": math.sqrt, "log": math.log,
}
_ARITY = {"abs": 1, "floor": 1, "ceil": 1, "exp": 1, "sqrt": 1, "log": 1}
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class FormulaError(ValueError):
    """The formula is not one this evaluator accepts, or it cannot be computed for these scores."""


@dataclass(frozen=True)
class Formula:
    tree: ast.expr
    names: frozenset[str]

    def evaluate(self, scores: dict[str, float]) -> float:
        try:
            value = float(_eval(self.tree, scores))
        except (ArithmeticError, ValueError, TypeError) as exc:  # TypeError: a complex power
            raise FormulaError(f"cannot compute it for scores {scores}: {exc}") from None
        if not math.isfinite(value):
            raise FormulaError(f"it gives {value} for scores {scores}")
        return value


def parse_formula(text: str) -> Formula:
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"the formula must be at most {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.replace("^", "**"), mode="eval").body
    except SyntaxError as exc:
        raise FormulaError(f"{text!r} does not parse: {exc.msg}") from None
    names: set[str] = set()
    _check(tree, names)
    return Formula(tree, frozenset(names))


def _check(node: ast.AST, names: set[str]) -> None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return
    if isinstance(node, ast.Name):
        names.add(node.id)
        return
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, names)
        _check(node.right, names)
        return
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        _check(node.operand, names)
        return
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS \
            and not node.keywords and node.args:
        arity = _ARITY.get(node.func.id)
        if arity is not None and len(node.args) != arity:
            raise FormulaError(f"{node.func.id}() takes {arity} argument; got {len(node.args)}")
        for arg in node.args:
            _check(arg, names)
        return
    raise FormulaError(f"{ast.unparse(node)!r} is not allowed; use numbers, grader names, + - * / ^, "
                       f"parentheses and {', '.join(FUNCTIONS)}")


def _eval(node: ast.expr, scores: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)  # type: ignore[arg-type]  # _check let only numbers through
    if isinstance(node, ast.Name):
        return float(scores[node.id])
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, scores), _eval(node.right, scores))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, scores))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # _check let nothing else through
    return float(FUNCTIONS[node.func.id](*(_eval(a, scores) for a in node.args)))
