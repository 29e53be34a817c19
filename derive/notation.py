"""Shared notation and assumptions of the derivations.

Derivations show ``p_i`` and ``lse`` where a student reads them; before a step is checked,
:func:`expand_notation` replaces them by their definitions, so the check sees only the
definitions of :mod:`gradsmith.derive.definitions`.
"""

from __future__ import annotations

import random
from functools import lru_cache

import mpmath
import sympy as sp
from gradsmith.derive.check import Assumption
from gradsmith.derive.definitions import symbolic_classes

S = symbolic_classes()
C, z, y, i, j, k = S.C, S.z, S.y, S.i, S.j, S.k
p = sp.IndexedBase("p", positive=True)
w = sp.IndexedBase("w", positive=True)
t = sp.Symbol("t", integer=True, nonnegative=True)
lse = sp.Symbol("lse", real=True)

LATEX_NAMES = {lse: r"\operatorname{lse}"}


def normalizer(dummy: sp.Symbol = j) -> sp.Sum:
    """sum_{dummy=0}^{C-1} exp(z_dummy)."""
    return sp.Sum(sp.exp(z[dummy]), (dummy, 0, C - 1))


def softmax(index: sp.Basic) -> sp.Expr:
    dummy = k if index == j else j
    return sp.exp(z[index]) / normalizer(dummy)


def class_sum(term: sp.Expr, dummy: sp.Symbol = k) -> sp.Sum:
    return sp.Sum(term, (dummy, 0, C - 1))


_CANONICAL = sp.Symbol("l_", integer=True, nonnegative=True)


def _is_normalizer(e: sp.Basic) -> bool:
    if not (isinstance(e, sp.Sum) and len(e.limits) == 1):
        return False
    dummy = e.limits[0][0]
    return dummy != _CANONICAL and e.function == sp.exp(z[dummy])


def _canonical_sum(e: sp.Sum) -> sp.Sum:
    dummy, low, high = e.limits[0]
    return sp.Sum(e.function.xreplace({dummy: _CANONICAL}), (_CANONICAL, low, high))


def expand_notation(expr: sp.Basic) -> sp.Basic:
    """Replace ``p[x]`` by the softmax and ``lse`` by ``log sum_j exp(z_j)``.

    The normalizer gets one canonical summation variable, so that ``sum_j exp(z_j)`` and
    ``sum_k exp(z_k)`` are recognised as the same quantity by the symbolic check.
    """
    expr = expr.replace(
        lambda e: isinstance(e, sp.Indexed) and e.base == p,
        lambda e: softmax(e.indices[0]),
    )
    expr = expr.xreplace({lse: sp.log(normalizer())})
    return expr.replace(_is_normalizer, _canonical_sum)


def _entries(values: dict, base: sp.IndexedBase) -> list:
    return [a for a in values if isinstance(a, sp.Indexed) and a.base == base]


def _normalize_targets(values: dict, rng: random.Random) -> dict:
    """Rescale the sampled y_k (k = 0..C-1) so that they sum to one."""
    entries = _entries(values, y)
    total = sum((values[a] for a in entries), mpmath.mpf(0))
    if total == 0:
        return values
    return {**values, **{a: values[a] / total for a in entries}}


@lru_cache(maxsize=1)
def targets_sum_to_one() -> Assumption:
    """sum_k y_k = 1: y is a probability distribution (or a one-hot vector)."""
    return Assumption(
        name="targets sum to one",
        statement=sp.Eq(class_sum(y[k]), 1),
        replacements={class_sum(y[k]): sp.Integer(1)},
        sample=_normalize_targets,
    )


def class_index(index: sp.Symbol) -> Assumption:
    """``index`` names a class: 0 <= index <= C - 1 (SymPy's Piecewise conditions close)."""
    return Assumption(
        name=f"{index} is a class index",
        statement=sp.And(sp.Ge(index, 0), sp.Le(index, C - 1)),
        replacements={
            sp.Le(index, C - 1): sp.true,
            sp.Lt(index, C): sp.true,
            sp.Ge(C - index, 1): sp.true,
        },
    )


def differs_from(a: sp.Symbol, b: sp.Symbol) -> Assumption:
    return Assumption(
        name=f"{a} != {b}",
        statement=sp.Ne(a, b),
        replacements={sp.KroneckerDelta(a, b): sp.Integer(0)},
    )


def in_range(index: sp.Symbol) -> sp.Boolean:
    return sp.Le(index, C - 1)
