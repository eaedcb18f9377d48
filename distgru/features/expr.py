"""Parse and evaluate qlib expression strings (``Ref($close, -2) / Ref($close, -1) - 1``) on a panel.

The grammar is the Python subset qlib's expressions use, with Python's precedence: comparisons
(``> < >= <= == !=``) bind loosest, then ``+ -``, then ``* /``, then unary minus. Fields are ``$name``; operators are
called by qlib's names (see :data:`OPERATORS`). Each distinct sub-expression (by its canonical text) is evaluated
once per :class:`Evaluator` and freed as soon as its last consumer has used it, so Alpha158's 158 expressions share
``Ref($close, 1)``, ``Max($high, 5)``, … without holding hundreds of arrays at once.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from distgru.features import ops

# name → (number of expression args, number of constant args after them)
OPERATORS: dict[str, tuple[int, int]] = {
    "Ref": (1, 1), "Mean": (1, 1), "Sum": (1, 1), "Std": (1, 1), "Max": (1, 1), "Min": (1, 1),
    "Quantile": (1, 2), "Rank": (1, 1), "IdxMax": (1, 1), "IdxMin": (1, 1), "Slope": (1, 1), "Rsquare": (1, 1),
    "Resi": (1, 1), "Corr": (2, 1), "Greater": (2, 0), "Less": (2, 0), "Log": (1, 0), "Abs": (1, 0),
}
_BINARY = {"+": "Add", "-": "Sub", "*": "Mul", "/": "Div"}
_COMPARE = (">=", "<=", "==", "!=", ">", "<")
_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|(\$\w+)|([A-Za-z_]\w*)|"
                    r"(>=|<=|==|!=|[-+*/(),<>]))")
# Regression operators → the statistic ops.rolling_regression names them by.
_REGRESSION = {"Slope": "slope", "Rsquare": "rsquare", "Resi": "resi"}


class ExpressionError(ValueError):
    """A malformed expression, unknown operator or unknown field; the message names it."""


@dataclass(frozen=True)
class Node:
    op: str
    """``Field``, ``Const``, ``Neg``, ``Add``…, ``Cmp<op>`` or an operator name."""
    args: tuple[Node, ...] = ()
    params: tuple[float | str, ...] = ()

    @cached_property
    def key(self) -> str:
        """Canonical text: equal sub-expressions, however spaced, share one cache entry."""
        inner = ",".join([a.key for a in self.args] + [repr(p) for p in self.params])
        return f"{self.op}({inner})"

    def fields(self) -> set[str]:
        out = {str(self.params[0])} if self.op == "Field" else set()
        for a in self.args:
            out |= a.fields()
        return out


def _tokens(text: str) -> list[str]:
    pos, out = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExpressionError(f"cannot parse {text!r} at position {pos}: {text[pos:pos + 10]!r}")
        out.append(m.group(m.lastindex or 0))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.toks, self.i = text, _tokens(text), 0

    def error(self, what: str) -> ExpressionError:
        near = " ".join(self.toks[max(0, self.i - 2):self.i + 2])
        return ExpressionError(f"{self.text!r}: {what} (near {near!r})")

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise self.error(f"expected {expected or 'more input'}, got {tok or 'end of expression'}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.comparison()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()!r}")
        return node

    def comparison(self) -> Node:
        node = self.additive()
        while self.peek() in _COMPARE:
            node = Node("Cmp" + self.take(), (node, self.additive()))
        return node

    def additive(self) -> Node:
        node = self.term()
        while self.peek() in ("+", "-"):
            node = Node(_BINARY[self.take()], (node, self.term()))
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek() in ("*", "/"):
            node = Node(_BINARY[self.take()], (node, self.unary()))
        return node

    def unary(self) -> Node:
        if self.peek() == "-":
            self.take()
            inner = self.unary()
            return Node("Const", params=(-inner.params[0],)) if inner.op == "Const" else Node("Neg", (inner,))
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.primary()

    def primary(self) -> Node:
        tok = self.take()
        if tok == "(":
            node = self.comparison()
            self.take(")")
            return node
        if tok.startswith("$"):
            return Node("Field", params=(tok[1:].lower(),))
        if tok[0].isdigit() or tok[0] == ".":
            return Node("Const", params=(float(tok),))
        if tok not in OPERATORS:
            raise self.error(f"unknown operator {tok!r}; valid operators: {', '.join(sorted(OPERATORS))}")
        return self.call(tok)

    def call(self, name: str) -> Node:
        self.take("(")
        args = [self.comparison()]
        while self.peek() == ",":
            self.take()
            args.append(self.comparison())
        self.take(")")
        n_expr, n_const = OPERATORS[name]
        if len(args) != n_expr + n_const:
            raise self.error(f"{name} takes {n_expr + n_const} arguments, got {len(args)}")
        consts = args[n_expr:]
        if any(c.op != "Const" for c in consts):
            raise self.error(f"{name}: the last {n_const} argument(s) must be numbers")
        return Node(name, tuple(args[:n_expr]), tuple(c.params[0] for c in consts))


def parse(text: str) -> Node:
    """The expression tree of a qlib expression string; :class:`ExpressionError` names what is wrong."""
    return _Parser(text).parse()


Value = np.ndarray | float


class Evaluator:
    """Evaluates a known set of expressions over ``fields`` ({name: float32 [N, D]}), sharing sub-expressions.

    ``start`` is each instrument's first day with data: days before it lie outside qlib's series (it matters only
    to IdxMax/IdxMin, whose windows would otherwise see those days as NaN).
    """

    def __init__(self, fields: dict[str, np.ndarray], roots: Iterable[Node], start: np.ndarray) -> None:
        self.fields, self.start = fields, start
        self.roots = list(roots)
        unknown = sorted({f for r in self.roots for f in r.fields()} - set(fields))
        if unknown:
            raise ExpressionError(f"unknown field(s) {', '.join('$' + f for f in unknown)}; "
                                  f"available: {', '.join('$' + f for f in sorted(fields))}")
        # Uses of each distinct node: by each distinct parent once (a cached node's children are not revisited)
        # and by each root request. A node's value is dropped when its count reaches zero.
        self.uses: Counter[str] = Counter(r.key for r in self.roots)
        self.groups: dict[tuple[str, ...], list[Node]] = {}
        seen: set[str] = set()
        stack = list(self.roots)
        while stack:
            node = stack.pop()
            if node.key in seen:
                continue
            seen.add(node.key)
            for child in _unique(_inputs(node)):
                self.uses[child.key] += 1
                stack.append(child)
            self.groups.setdefault(_group_key(node), []).append(node)
        self.cache: dict[str, Value] = {}

    def value(self, node: Node) -> Value:
        """The node's value for one consumer (a root request); frees it when no consumer is left."""
        out = self._get(node)
        self._release(node.key)
        return out

    def _release(self, key: str) -> None:
        self.uses[key] -= 1
        if self.uses[key] <= 0:
            self.cache.pop(key, None)

    def _get(self, node: Node) -> Value:
        if node.key not in self.cache:
            self.cache.update(self._compute(node))
        return self.cache[node.key]

    def _compute(self, node: Node) -> dict[str, Value]:
        if node.op == "Field":
            return {node.key: self.fields[str(node.params[0])]}
        if node.op == "Const":
            return {node.key: float(node.params[0])}
        members = self.groups[_group_key(node)]
        inputs = {d.key: self._get(d) for m in members for d in _inputs(m)}
        if len(members) > 1:
            results = self._apply_group(members, inputs)
        else:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                results = {node.key: self._apply(node, [inputs[d.key] for d in _inputs(node)])}
        for m in members:
            for dep in _unique(_inputs(m)):
                self._release(dep.key)
        return results

    def _apply_group(self, members: list[Node], inputs: dict[str, Value]) -> dict[str, Value]:
        """Siblings sharing (input, window): Quantile levels and Rank from one sorted window, Slope/Rsquare/Resi
        from one pass."""
        first = members[0]
        x, w = _array(inputs[first.args[0].key]), ops.check_window(first.params[0], first.op)
        if first.op in _ORDER:
            levels = [m for m in members if m.op == "Quantile"]
            ranked = [m for m in members if m.op == "Rank"]
            vals, rank = ops.rolling_order_stats(x, w, [float(m.params[1]) for m in levels], bool(ranked))
            return {**{m.key: v for m, v in zip(levels, vals, strict=True)}, **{m.key: rank for m in ranked}}
        # Only Rsquare has a second input, Std(x, w).
        std = next((_array(inputs[_inputs(m)[1].key]) for m in members if m.op == "Rsquare"), None)
        res = ops.rolling_regression(x, w, [_REGRESSION[m.op] for m in members], std=std)
        return {m.key: res[_REGRESSION[m.op]] for m in members}

    def _apply(self, node: Node, args: list[Value]) -> Value:
        op, p = node.op, node.params
        if op.startswith("Cmp"):
            return ops.compare(args[0], args[1], op[3:])
        if op in _ELEMENTWISE:
            return _ELEMENTWISE[op](*args)
        if op == "Ref":
            return ops.ref(_array(args[0]), int(p[0]))
        w = ops.check_window(p[-1] if op == "Corr" else p[0], op)
        if op == "Corr":
            return ops.rolling_corr(_array(args[0]), _array(args[1]), w, std_a=_array(args[2]),
                                    std_b=_array(args[3]))
        if op in ("IdxMax", "IdxMin"):
            return ops.rolling_argext(_array(args[0]), w, self.start, largest=op == "IdxMax")
        if op == "Quantile":
            return ops.rolling_quantiles(_array(args[0]), w, [float(p[1])])[0]
        if op in _REGRESSION:
            std = _array(args[1]) if op == "Rsquare" else None
            return ops.rolling_regression(_array(args[0]), w, [_REGRESSION[op]], std=std)[_REGRESSION[op]]
        return _WINDOWED[op](_array(args[0]), w)


def _inputs(node: Node) -> list[Node]:
    """Inputs of a node: its arguments, plus the rolling stds that qlib's Corr and Rsquare mask with.

    Making those stds ordinary nodes lets ``Std($close, 20)`` serve STD20, RSQR20 and CORR20 from one pass.
    """
    if node.op == "Corr":
        return [*node.args, *(Node("Std", (a,), node.params) for a in node.args)]
    if node.op == "Rsquare":
        return [*node.args, Node("Std", node.args, node.params)]
    return list(node.args)


def _unique(nodes: list[Node]) -> list[Node]:
    return list({n.key: n for n in nodes}.values())


def _group_key(node: Node) -> tuple[str, ...]:
    if node.op in _ORDER:
        return ("Order", node.args[0].key, repr(node.params[0]))
    if node.op in _REGRESSION:
        return ("Regression", node.args[0].key, repr(node.params[0]))
    return (node.key,)


def _array(x: Value) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ExpressionError("rolling operators need a series, not a constant")
    return x


_ELEMENTWISE: dict[str, Callable[..., Value]] = {
    "Neg": np.negative, "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
    "Greater": ops.greater, "Less": ops.less, "Log": np.log, "Abs": np.abs,
}

_ORDER = ("Quantile", "Rank")

_WINDOWED: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "Mean": ops.rolling_mean, "Sum": ops.rolling_sum, "Std": ops.rolling_std, "Max": ops.rolling_max,
    "Min": ops.rolling_min, "Rank": ops.rolling_rank,
}


def extended_window(node: Node) -> tuple[int, int]:
    """qlib's ``get_extended_window_size`` of an expression: (days of history before, days after) it reads.

    qlib's expression provider loads each requested expression on ``[max(0, start - left), end + right]`` of the
    calendar (``start``/``end`` being the query's days), so a result depends on where that series begins even
    when every window is full: pandas' rolling kernels carry rounding state from the series' first value. The
    rule, operator by operator: fields and constants (0, 0); element-wise operators the maximum over their
    arguments; ``Ref(x, N)``: (max(l + N, l), max(r - N, r)); a rolling operator of window N (Corr over both
    arguments): (l + N - 1, r).
    """
    if node.op in ("Field", "Const"):
        return 0, 0
    sides = [extended_window(a) for a in node.args]
    left, right = max(s[0] for s in sides), max(s[1] for s in sides)
    if node.op == "Ref":
        n = int(node.params[0])
        return max(left + n, left), max(right - n, right)
    if node.op in OPERATORS and OPERATORS[node.op][1]:
        n = ops.check_window(node.params[-1] if node.op == "Corr" else node.params[0], node.op)
        return left + n - 1, right
    return left, right


def evaluate(text: str, fields: dict[str, np.ndarray], start: np.ndarray | None = None) -> np.ndarray:
    """One expression on ``fields`` ({name: [N, D]}); ``start`` defaults to each row's first non-NaN day."""
    node = parse(text)
    if start is None:
        first = next(iter(fields.values()))
        has = ~np.isnan(first)
        start = np.where(has.any(axis=1), np.argmax(has, axis=1), first.shape[1])
    value = Evaluator(fields, [node], start).value(node)
    shape = next(iter(fields.values())).shape
    return np.broadcast_to(np.asarray(value), shape)
