"""What a loss module states: its options, reductions and per-row loss, and the rows it is
written on (a symbolic number of classes for the derivation, a concrete one for checks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp

C = sp.Symbol("C", integer=True, positive=True)
z = sp.IndexedBase("z", real=True)
u = sp.IndexedBase("u", real=True)
alpha = sp.IndexedBase("alpha", positive=True)
j = sp.Symbol("j", integer=True, nonnegative=True)
t = sp.Symbol("t", integer=True, nonnegative=True)

KINDS = ("index", "teacher")
DENOMINATORS = (None, "one", "rows", "elements")


class RowLossError(ValueError):
    """A loss definition does not reduce to the shape the generic kernels evaluate."""


@dataclass(frozen=True)
class Option:
    """A scalar option of a loss: its symbol's name, default and valid range."""

    name: str
    default: float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    doc: str = ""

    @property
    def symbol(self) -> sp.Symbol:
        positive = self.low is not None and (self.low > 0 or (self.low == 0 and self.low_open))
        nonnegative = self.low is not None and self.low >= 0
        return sp.Symbol(self.name, real=True, positive=positive or None,
                         nonnegative=nonnegative or None)

    def describe(self) -> str:
        low = "(" if self.low_open else "["
        low += "-inf" if self.low is None else f"{self.low:g}"
        high = "inf)" if self.high is None else f"{self.high:g}]"
        return f"{low}, {high}"


@dataclass(frozen=True)
class Reduction:
    """rows: divide by the counted rows; elements: by N C; one: the sum; None: per row."""

    name: str
    denominator: str | None

    def total(self, counted_rows: int, n_rows: int, n_classes: int) -> int | None:
        """What the summed row losses are divided by; None: no sum, one loss per row."""
        if self.denominator is None:
            return None
        return {"one": 1, "rows": counted_rows, "elements": n_rows * n_classes}[self.denominator]


@dataclass(frozen=True)
class LossDefinition:
    """What a loss module states: name, options, reductions, and the per-row loss of ``row``."""

    name: str
    title: str
    kind: str  # "index": logits and class targets; "teacher": student and teacher logits
    loss: Callable[..., sp.Expr]  # loss(row, **options) -> per-row loss
    options: tuple[Option, ...] = ()
    scale: Callable[..., sp.Expr] = lambda **_: sp.Integer(1)  # logits -> softmax input factor
    class_weights: bool = False  # an optional per-class alpha (index kind)
    reductions: tuple[Reduction, ...] = (
        Reduction("mean", "rows"), Reduction("sum", "one"), Reduction("none", None),
    )
    default_reduction: str = "mean"
    assumptions: tuple[str, ...] = ()
    closed_form: Callable[..., sp.Expr] | None = None  # dL/dz_j as a reader would write it
    reduces_to: tuple[tuple[str, dict, str], ...] = ()  # (claim, option values, other loss)
    sample: dict = field(default_factory=dict)  # option values for numeric checks
    # The per-row loss written with torch (passed in, never imported here), for the benchmark.
    torch_rows: Callable | None = None

    def option_symbols(self) -> dict[str, sp.Symbol]:
        return {option.name: option.symbol for option in self.options}

    def reduction(self, name: str) -> Reduction:
        for reduction in self.reductions:
            if reduction.name == name:
                return reduction
        raise KeyError(name)


class SymbolicRow:
    """One row for a symbolic number of classes: logits z (and teacher u), target t, alpha."""

    def __init__(self, scale: sp.Expr, class_weights: bool):
        self.C = C
        self.t = t
        self.scale = scale
        self.class_weights = class_weights
        self._dummies = sp.numbered_symbols("k", integer=True, nonnegative=True)

    def z(self, k: sp.Basic) -> sp.Expr:
        return z[k]

    def u(self, k: sp.Basic) -> sp.Expr:
        return u[k]

    def alpha(self, k: sp.Basic) -> sp.Expr:
        return alpha[k] if self.class_weights else sp.Integer(1)

    def sum(self, term: Callable[[sp.Symbol], sp.Expr]) -> sp.Expr:
        dummy = next(self._dummies)
        return sp.Sum(term(dummy), (dummy, 0, self.C - 1))

    def lse(self, logits: Callable | None = None) -> sp.Expr:
        logits = logits or self.z
        return sp.log(self.sum(lambda k: sp.exp(self.scale * logits(k))))

    def log_p(self, k: sp.Basic) -> sp.Expr:
        return self.scale * self.z(k) - self.lse(self.z)

    def log_q(self, k: sp.Basic) -> sp.Expr:
        return self.scale * self.u(k) - self.lse(self.u)

    def p(self, k: sp.Basic) -> sp.Expr:
        return sp.exp(self.log_p(k))

    def q(self, k: sp.Basic) -> sp.Expr:
        return sp.exp(self.log_q(k))


class ConcreteRow:
    """One row of a concrete number of classes, with explicit entries (for concrete checks)."""

    def __init__(self, z, alpha=None, y=None, t: int | None = None, u=None, scale=1):
        self._z, self.t, self.scale = tuple(z), t, scale
        self.C = len(self._z)
        self._u = tuple(u) if u is not None else None
        self._alpha = tuple(alpha) if alpha is not None else (sp.Integer(1),) * self.C
        self._y = tuple(y) if y is not None else (sp.Integer(0),) * self.C

    def z(self, k: int) -> sp.Expr:
        return self._z[k]

    def u(self, k: int) -> sp.Expr:
        return self._u[k]

    def alpha(self, k: int) -> sp.Expr:
        return self._alpha[k]

    def y(self, k: int) -> sp.Expr:
        return self._y[k]

    def sum(self, term: Callable[[int], sp.Expr]) -> sp.Expr:
        return sp.Add(*[term(k) for k in range(self.C)])

    def lse(self, logits: Callable | None = None) -> sp.Expr:
        logits = logits or self.z
        return sp.log(self.sum(lambda k: sp.exp(self.scale * logits(k))))

    def log_p(self, k: int) -> sp.Expr:
        return self.scale * self._z[k] - self.lse()

    def log_q(self, k: int) -> sp.Expr:
        return self.scale * self._u[k] - self.lse(self.u)

    def p(self, k: int) -> sp.Expr:
        return sp.exp(self.log_p(k))

    def q(self, k: int) -> sp.Expr:
        return sp.exp(self.log_q(k))
