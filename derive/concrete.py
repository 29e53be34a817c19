"""The same claims for a concrete number of classes C, one set per C the user names.

Each gradient is the vector of SymPy derivatives of the loss over explicit symbols
z_0..z_{C-1}.  Before a step is checked, ``z_k = log e_k`` with ``e_k > 0`` (a bijection) turns
every exponential into a positive symbol, so ``cancel`` decides the rational identities.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import cache

import mpmath
import sympy as sp
from gradsmith.derive.check import Assumption
from gradsmith.derive.definitions import ConcreteClasses, concrete_classes
from gradsmith.derive.steps import Derivation, DerivationBuilder

GRADIENT = r"\nabla_z L"


@cache
def _probability_symbols(num_classes: int) -> tuple[sp.Symbol, ...]:
    return tuple(sp.symbols(f"p_0:{num_classes}", positive=True))


@cache
def _exp_symbols(num_classes: int) -> tuple[sp.Symbol, ...]:
    return tuple(sp.symbols(f"e_0:{num_classes}", positive=True))


def _prepare(classes: ConcreteClasses) -> Callable[[sp.Basic], sp.Basic]:
    probabilities = dict(zip(_probability_symbols(classes.num_classes), classes.probabilities,
                             strict=True))
    exps = _exp_symbols(classes.num_classes)
    change = {zk: sp.log(ek) for zk, ek in zip(classes.z, exps, strict=True)}

    def prepare(expr: sp.Basic) -> sp.Basic:
        expr = expr.xreplace(probabilities)
        expr = expr.applyfunc(lambda e: e.doit()) if isinstance(expr, sp.MatrixBase) else expr.doit()
        return expr.xreplace(change)

    return prepare


def _sample_sum_to_one(y_symbols: tuple[sp.Symbol, ...]):
    def sample(values: dict, rng: random.Random) -> dict:
        total = sum((values[s] for s in y_symbols if s in values), mpmath.mpf(0))
        if total == 0:
            return values
        return {**values, **{s: values[s] / total for s in y_symbols if s in values}}

    return sample


@cache
def targets_sum_to_one(num_classes: int) -> Assumption:
    """sum_k y_k = 1, applied by eliminating y_{C-1} = 1 - sum_{k < C-1} y_k."""
    y = concrete_classes(num_classes).y
    return Assumption(
        name="targets sum to one",
        statement=sp.Eq(sp.Add(*y), 1),
        replacements={y[-1]: 1 - sp.Add(*y[:-1])},
        sample=_sample_sum_to_one(y),
    )


def _builder(classes: ConcreteClasses, name: str, lhs: str, start) -> DerivationBuilder:
    return DerivationBuilder(
        name, lhs, start, rule="differentiate the loss",
        classes=classes.num_classes, prepare=_prepare(classes),
    )


def _gradient(loss: sp.Expr, classes: ConcreteClasses) -> tuple[sp.Matrix, sp.Matrix]:
    shown = sp.Matrix([sp.Derivative(loss, zi) for zi in classes.z])
    return shown, sp.Matrix([sp.diff(loss, zi) for zi in classes.z])


@cache
def gradient_general(num_classes: int) -> Derivation:
    """grad L = p sum_k y_k - y, for explicit symbols."""
    classes = concrete_classes(num_classes)
    shown, computed = _gradient(classes.loss, classes)
    p = sp.Matrix(_probability_symbols(num_classes))
    b = _builder(classes, "dL/dz = p sum_k y_k - y", GRADIENT, shown)
    b.then(computed, "chain rule and quotient rule (SymPy)")
    b.then(p * classes.target_sum - sp.Matrix(classes.y), "definition of p; cancel")
    return b.build()


@cache
def gradient_sum_to_one(num_classes: int) -> Derivation:
    """grad L = p - y under sum_k y_k = 1."""
    classes = concrete_classes(num_classes)
    general = gradient_general(num_classes)
    p = sp.Matrix(_probability_symbols(num_classes))
    b = DerivationBuilder(
        "dL/dz = p - y", GRADIENT, general.result,
        rule="the general gradient", classes=num_classes, prepare=_prepare(classes),
    )
    b.then(p - sp.Matrix(classes.y), "substitution of an assumption",
           assumptions=[targets_sum_to_one(num_classes)])
    return b.build()


@cache
def gradient_index_target(num_classes: int) -> Derivation:
    """grad L = p - onehot(t) for every integer target t, as a C x C matrix (column t)."""
    classes = concrete_classes(num_classes)
    columns = [_gradient(classes.index_loss(target), classes) for target in range(num_classes)]
    shown = sp.Matrix.hstack(*[c[0] for c in columns])
    computed = sp.Matrix.hstack(*[c[1] for c in columns])
    p = sp.Matrix(_probability_symbols(num_classes))
    claimed = sp.Matrix.hstack(*[p - sp.eye(num_classes)[:, t] for t in range(num_classes)])
    b = _builder(classes, "dL/dz = p - onehot(t), every t", r"\left[\nabla_z L\right]_{t}", shown)
    b.then(computed, "chain rule and quotient rule (SymPy)")
    b.then(claimed, "definition of p; cancel")
    return b.build()


@cache
def softmax_jacobian(num_classes: int) -> Derivation:
    """dp_j/dz_i = p_j (delta_ij - p_i) as the matrix diag(p) - p p^T."""
    classes = concrete_classes(num_classes)
    probs = classes.probabilities
    shown = sp.Matrix(num_classes, num_classes,
                      lambda r, c: sp.Derivative(probs[c], classes.z[r]))
    computed = sp.Matrix(num_classes, num_classes, lambda r, c: sp.diff(probs[c], classes.z[r]))
    p = sp.Matrix(_probability_symbols(num_classes))
    b = _builder(classes, "dp_j/dz_i = p_j (delta_ij - p_i)",
                 r"\frac{\partial p_j}{\partial z_i}", shown)
    b.then(computed, "quotient rule (SymPy)")
    b.then(sp.diag(*p) - p * p.T, "definition of p; cancel")
    return b.build()


def concrete_derivations(num_classes: int) -> tuple[Derivation, ...]:
    return (
        gradient_general(num_classes),
        gradient_sum_to_one(num_classes),
        gradient_index_target(num_classes),
        softmax_jacobian(num_classes),
    )
