"""dL/dz for a symbolic number of classes C: one derivation covers every C at once.

The derivative is SymPy's: ``diff`` of a ``Sum`` over an ``IndexedBase`` gives Kronecker
deltas, ``doit`` collapses them into ``Piecewise((..., i <= C - 1), (0, True))``, and the
stated assumptions close the rest.  Nothing here is typed in as a derivative.
"""

from __future__ import annotations

from functools import lru_cache

import sympy as sp
from gradsmith.derive.notation import (
    C,
    class_index,
    class_sum,
    differs_from,
    expand_notation,
    i,
    in_range,
    j,
    k,
    normalizer,
    p,
    softmax,
    t,
    targets_sum_to_one,
    y,
    z,
)
from gradsmith.derive.steps import Derivation, DerivationBuilder

DL_DZ = r"\frac{\partial L}{\partial z_i}"


def _builder(name: str, lhs: str, start: sp.Basic, **kwargs) -> DerivationBuilder:
    return DerivationBuilder(
        name, lhs, start, class_symbol=C, prepare=expand_notation, **kwargs
    )


@lru_cache(maxsize=1)
def loss_rewrite() -> Derivation:
    """L = -sum_k y_k log p_k = (sum_k y_k) log sum_j exp(z_j) - sum_k y_k z_k."""
    log_norm = sp.log(normalizer())
    b = _builder("loss, rewritten", "L", -class_sum(y[k] * sp.log(p[k])),
                 intro="The cross-entropy of a target y against the softmax p of the logits z.")
    b.then(-class_sum(y[k] * sp.log(softmax(k))), "definition of the softmax p_k")
    b.then(-class_sum(y[k] * (z[k] - log_norm)), "log of a quotient, log exp(z_k) = z_k")
    b.then(class_sum(y[k]) * log_norm - class_sum(y[k] * z[k]), "linearity of the sum")
    return b.build()


def _collapsed_gradient(loss: sp.Expr, name: str, intro: str,
                        assumptions=()) -> DerivationBuilder:
    """The gradient chain up to the Kronecker-delta collapse, all computed by SymPy."""
    derivative = sp.diff(loss, z[i])
    b = _builder(name, DL_DZ, sp.Derivative(loss, z[i]), rule="differentiate the loss",
                 intro=intro, assumptions=assumptions)
    b.then(derivative, "chain rule, with dz_k/dz_i = delta_ik")
    b.then(derivative.doit(), "Kronecker-delta sum collapse")
    return b


@lru_cache(maxsize=1)
def gradient_general() -> Derivation:
    """dL/dz_i = p_i sum_k y_k - y_i, with no assumption on y."""
    loss = loss_rewrite().result
    b = _collapsed_gradient(loss, "dL/dz_i = p_i sum_k y_k - y_i",
                            "Differentiating the rewritten loss; no assumption on y yet.")
    general = p[i] * class_sum(y[k]) - y[i]
    b.then(sp.Piecewise((general, in_range(i)), (0, True)), "definition of p_i")
    b.then(general, "restriction to a class index", assumptions=[class_index(i)])
    return b.build()


@lru_cache(maxsize=1)
def gradient_sum_to_one() -> Derivation:
    """dL/dz_i = p_i - y_i, under the explicit assumption sum_k y_k = 1."""
    general = gradient_general().result
    b = _builder("dL/dz_i = p_i - y_i", DL_DZ, general, rule="the general gradient",
                 assumptions=[class_index(i)],
                 intro="With a probability target the sum of y is one; the claim needs it.")
    b.then(p[i] - y[i], "substitution of an assumption", assumptions=[targets_sum_to_one()])
    return b.build()


@lru_cache(maxsize=1)
def index_loss_rewrite() -> Derivation:
    """L = -log p_t = log sum_j exp(z_j) - z_t for an integer target t."""
    b = _builder("index-target loss, rewritten", "L",
                 -class_sum(sp.KroneckerDelta(k, t) * sp.log(p[k])),
                 rule="definition, with the one-hot target y_k = [k = t]",
                 intro="An integer target t (0 <= t < C) is the one-hot y_k = [k = t].")
    b.then(-sp.log(p[t]), "Kronecker-delta sum collapse", assumptions=[class_index(t)])
    b.then(-sp.log(softmax(t)), "definition of p_t")
    b.then(sp.log(normalizer()) - z[t], "log of a quotient, log exp(z_t) = z_t")
    return b.build()


@lru_cache(maxsize=1)
def gradient_index_target() -> Derivation:
    """dL/dz_i = p_i - [i = t] for an integer target 0 <= t < C."""
    b = _collapsed_gradient(index_loss_rewrite().result, "dL/dz_i = p_i - [i = t]",
                            "Differentiating the index-target loss.",
                            assumptions=index_loss_rewrite().assumptions)
    b.then(sp.Piecewise((p[i], in_range(i)), (0, True)) - sp.KroneckerDelta(i, t),
           "definition of p_i")
    b.then(p[i] - sp.KroneckerDelta(i, t), "restriction to a class index",
           assumptions=[class_index(i)])
    return b.build()


@lru_cache(maxsize=1)
def index_target_cases() -> tuple[Derivation, Derivation]:
    """The two cases of the index-target gradient: i = t gives p_t - 1, i != t gives p_i."""
    result = gradient_index_target().result
    given = gradient_index_target().assumptions
    same = _builder("case i = t", r"\frac{\partial L}{\partial z_t}", result.subs(i, t),
                    rule="the gradient at i = t", assumptions=given)
    same.then(p[t] - 1, "delta_tt = 1")
    other = _builder("case i != t", DL_DZ, result, rule="the gradient", assumptions=given)
    other.then(p[i], "delta_it = 0", assumptions=[differs_from(i, t)])
    return same.build(), other.build()


@lru_cache(maxsize=1)
def onehot_sums_to_one() -> Derivation:
    """sum_k [k = t] = 1 for a class index t: the one-hot target satisfies the assumption."""
    total = class_sum(sp.KroneckerDelta(k, t))
    b = _builder("sum_k [k = t] = 1", r"\sum_{k=0}^{C-1} [k = t]", total)
    b.then(total.doit(), "Kronecker-delta sum collapse")
    b.then(sp.Integer(1), "restriction to a class index", assumptions=[class_index(t)])
    return b.build()


@lru_cache(maxsize=1)
def softmax_jacobian() -> Derivation:
    """dp_j/dz_i = p_j (delta_ij - p_i)."""
    p_j = softmax(j)
    derivative = sp.diff(p_j, z[i])
    b = _builder("dp_j/dz_i = p_j (delta_ij - p_i)", r"\frac{\partial p_j}{\partial z_i}",
                 sp.Derivative(p_j, z[i]), rule="definition of p_j",
                 intro="The Jacobian of the softmax, used by the chain rule through p.")
    b.then(derivative, "quotient rule, with dz_k/dz_i = delta_ik")
    b.then(derivative.doit(), "Kronecker-delta sum collapse")
    b.then(p[j] * sp.KroneckerDelta(i, j) - p[j] * sp.Piecewise((p[i], in_range(i)), (0, True)),
           "definition of p_i and p_j")
    b.then(p[j] * (sp.KroneckerDelta(i, j) - p[i]), "restriction to a class index; factor p_j",
           assumptions=[class_index(i)])
    return b.build()


def symbolic_derivations() -> tuple[Derivation, ...]:
    """Every symbolic-C derivation, in reading order."""
    same, other = index_target_cases()
    return (
        loss_rewrite(),
        gradient_general(),
        gradient_sum_to_one(),
        index_loss_rewrite(),
        gradient_index_target(),
        same,
        other,
        onehot_sums_to_one(),
        softmax_jacobian(),
    )
