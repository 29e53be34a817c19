"""The definitions everything else is derived from: softmax and the cross-entropy loss.

Two forms: one for a symbolic number of classes C (IndexedBase and Sum over k = 0..C-1),
one for a concrete C (explicit symbols z_0..z_{C-1}).  No derivative is written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

import sympy as sp

MAX_CLASSES = 4096


@dataclass(frozen=True)
class SymbolicClasses:
    """Softmax and loss for a symbolic number of classes C."""

    C: sp.Symbol
    z: sp.IndexedBase
    y: sp.IndexedBase
    i: sp.Symbol
    j: sp.Symbol
    k: sp.Symbol

    def sum_over_classes(self, term: sp.Expr, index: sp.Symbol) -> sp.Sum:
        return sp.Sum(term, (index, 0, self.C - 1))

    @property
    def normalizer(self) -> sp.Sum:
        return self.sum_over_classes(sp.exp(self.z[self.j]), self.j)

    def softmax(self, index: sp.Symbol) -> sp.Expr:
        return sp.exp(self.z[index]) / self.normalizer

    @property
    def loss(self) -> sp.Expr:
        """L = -sum_k y_k log p_k."""
        return -self.sum_over_classes(self.y[self.k] * sp.log(self.softmax(self.k)), self.k)

    @property
    def target_sum(self) -> sp.Sum:
        return self.sum_over_classes(self.y[self.k], self.k)


@lru_cache(maxsize=1)
def symbolic_classes() -> SymbolicClasses:
    return SymbolicClasses(
        C=sp.Symbol("C", integer=True, positive=True),
        z=sp.IndexedBase("z", real=True),
        y=sp.IndexedBase("y", real=True),
        i=sp.Symbol("i", integer=True, nonnegative=True),
        j=sp.Symbol("j", integer=True, nonnegative=True),
        k=sp.Symbol("k", integer=True, nonnegative=True),
    )


@dataclass(frozen=True)
class ConcreteClasses:
    """Softmax and loss for a concrete number of classes, with explicit symbols."""

    num_classes: int
    z: tuple[sp.Symbol, ...]
    y: tuple[sp.Symbol, ...]

    @property
    def normalizer(self) -> sp.Expr:
        return sp.Add(*[sp.exp(zj) for zj in self.z])

    def softmax(self, index: int) -> sp.Expr:
        return sp.exp(self.z[index]) / self.normalizer

    @property
    def probabilities(self) -> tuple[sp.Expr, ...]:
        return tuple(self.softmax(k) for k in range(self.num_classes))

    @property
    def loss(self) -> sp.Expr:
        """L = -sum_k y_k log p_k."""
        return -sp.Add(*[yk * sp.log(self.softmax(k)) for k, yk in enumerate(self.y)])

    def index_loss(self, target: int) -> sp.Expr:
        """L = -log p_t for an integer target t."""
        return -sp.log(self.softmax(target))

    @property
    def target_sum(self) -> sp.Expr:
        return sp.Add(*self.y)


def validate_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    return num_classes


@cache
def concrete_classes(num_classes: int) -> ConcreteClasses:
    validate_num_classes(num_classes)
    return ConcreteClasses(
        num_classes=num_classes,
        z=tuple(sp.symbols(f"z_0:{num_classes}", real=True)),
        y=tuple(sp.symbols(f"y_0:{num_classes}", real=True)),
    )
