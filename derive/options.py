"""The options of PyTorch's cross_entropy, plus z-loss and logit softcapping, for symbolic C.

Each loss is written from its definition (PyTorch's, where PyTorch defines it); SymPy
differentiates it and the chain closes on the closed form the kernels evaluate.
"""

from __future__ import annotations

from functools import cache

import sympy as sp
from gradsmith.derive.notation import (
    C,
    class_index,
    class_sum,
    expand_notation,
    i,
    in_range,
    k,
    lse,
    normalizer,
    p,
    softmax,
    t,
    targets_sum_to_one,
    w,
    y,
    z,
)
from gradsmith.derive.steps import Derivation, DerivationBuilder

eps = sp.Symbol("epsilon", nonnegative=True)
lam = sp.Symbol("lambda", nonnegative=True)
cap = sp.Symbol("s", positive=True)
q = sp.IndexedBase("q", positive=True)  # softmax of the softcapped logits
DL_DZ = r"\frac{\partial L}{\partial z_i}"


def _builder(name: str, lhs: str, start: sp.Basic, **kwargs) -> DerivationBuilder:
    kwargs.setdefault("prepare", expand_notation)
    return DerivationBuilder(name, lhs, start, class_symbol=C, **kwargs)


def _differentiate(name: str, loss: sp.Expr, intro: str, assumptions=(), **kwargs):
    """Steps shared by every option: SymPy's derivative, then the Kronecker-delta collapse."""
    derivative = sp.diff(loss, z[i])
    b = _builder(name, DL_DZ, sp.Derivative(loss, z[i]), rule="differentiate the loss",
                 intro=intro, assumptions=assumptions, **kwargs)
    b.then(derivative, "chain rule, with dz_k/dz_i = delta_ik")
    b.then(derivative.doit(), "Kronecker-delta sum collapse")
    return b


def _on_classes(expr: sp.Expr) -> sp.Piecewise:
    return sp.Piecewise((expr, in_range(i)), (0, True))


@cache
def class_weights() -> Derivation:
    """L = w_t (lse - z_t): dL/dz_i = w_t (p_i - [i = t])."""
    loss = w[t] * (sp.log(normalizer()) - z[t])
    b = _differentiate("weights: dL/dz_i = w_t (p_i - [i = t])", loss,
                       "Class weights w scale the row of target t: L = w_t (lse - z_t).",
                       assumptions=[class_index(t)])
    b.then(w[t] * (_on_classes(p[i]) - sp.KroneckerDelta(i, t)), "definition of p_i")
    b.then(w[t] * (p[i] - sp.KroneckerDelta(i, t)), "restriction to a class index",
           assumptions=[class_index(i)])
    return b.build()


def smoothed(index: sp.Basic) -> sp.Expr:
    """PyTorch's smoothed one-hot target: (1 - eps) [index = t] + eps / C."""
    return (1 - eps) * sp.KroneckerDelta(index, t) + eps / C


@cache
def label_smoothing() -> Derivation:
    """Target (1 - eps) onehot + eps/C: dL/dz_i = p_i - y'_i."""
    loss = -class_sum(smoothed(k) * sp.log(softmax(k)))
    b = _differentiate("label smoothing: dL/dz_i = p_i - y'_i", loss,
                       "The target y'_k = (1 - eps)[k = t] + eps/C; it sums to one.",
                       assumptions=[class_index(t)])
    b.then(_on_classes(p[i] * class_sum(smoothed(k)) - smoothed(i)), "definition of p_i")
    b.then(p[i] * ((1 - eps) + eps) - smoothed(i),
           "restriction to a class index; Kronecker-delta sum collapse",
           assumptions=[class_index(i)])
    b.then(p[i] - smoothed(i), "(1 - eps) + eps = 1")
    return b.build()


@cache
def weighted_label_smoothing() -> Derivation:
    """PyTorch: L = (1-eps) w_t (lse - z_t) + eps/C sum_j w_j (lse - z_j)."""
    log_norm = sp.log(normalizer())
    loss = (1 - eps) * w[t] * (log_norm - z[t]) + eps / C * class_sum(w[k] * (log_norm - z[k]))
    total = class_sum(w[k])
    b = _differentiate(
        "weights + smoothing: dL/dz_i = p_i ((1-eps) w_t + eps/C sum_j w_j) - ...", loss,
        "PyTorch weights the smoothing term per class: "
        "L = (1 - eps) w_t (lse - z_t) + eps/C sum_j w_j (lse - z_j).",
        assumptions=[class_index(t)])
    b.then(_on_classes(p[i] * ((1 - eps) * w[t] + eps / C * total)
                       - (1 - eps) * w[t] * sp.KroneckerDelta(i, t) - eps / C * w[i])
           + sp.Piecewise((0, in_range(i)), ((1 - eps) * w[t] * sp.KroneckerDelta(i, t), True)),
           "definition of p_i")
    b.then(p[i] * ((1 - eps) * w[t] + eps / C * total)
           - (1 - eps) * w[t] * sp.KroneckerDelta(i, t) - eps / C * w[i],
           "restriction to a class index", assumptions=[class_index(i)])
    return b.build()


@cache
def weighted_probability_targets() -> Derivation:
    """L = -sum_k w_k y'_k log p_k, y' = (1-eps) y + eps/C: dL/dz_i = p_i sum_k w_k y'_k - w_i y'_i."""
    def target(index: sp.Basic) -> sp.Expr:
        return (1 - eps) * y[index] + eps / C

    loss = -class_sum(w[k] * target(k) * sp.log(softmax(k)))
    b = _differentiate("probability targets + weights + smoothing", loss,
                       "Probability targets y, smoothed to (1 - eps) y + eps/C, weighted per "
                       "class (no sum-to-one is needed once weights enter).")
    weighted_total = class_sum(w[k] * target(k))
    b.then(_on_classes(p[i] * weighted_total - w[i] * target(i)), "definition of p_i")
    b.then(p[i] * weighted_total - w[i] * target(i), "restriction to a class index",
           assumptions=[class_index(i)])
    return b.build()


@cache
def z_loss() -> Derivation:
    """L = -sum_k y_k log p_k + lambda lse^2: dL/dz_i = p_i (1 + 2 lambda lse) - y_i."""
    loss = -class_sum(y[k] * sp.log(softmax(k))) + lam * sp.log(normalizer()) ** 2
    b = _differentiate("z-loss: dL/dz_i = p_i (1 + 2 lambda lse) - y_i", loss,
                       "z-loss adds lambda lse^2, lse = log sum_j exp(z_j), pulling lse to 0.")
    b.then(_on_classes(p[i] * class_sum(y[k]) - y[i] + 2 * lam * lse * p[i]),
           "definition of p_i and lse")
    b.then(p[i] * class_sum(y[k]) - y[i] + 2 * lam * lse * p[i], "restriction to a class index",
           assumptions=[class_index(i)])
    b.then(p[i] * (1 + 2 * lam * lse) - y[i], "substitution of an assumption",
           assumptions=[targets_sum_to_one()])
    return b.build()


def softcapped(index: sp.Basic) -> sp.Expr:
    return cap * sp.tanh(z[index] / cap)


def _expand_softcap(expr: sp.Basic) -> sp.Basic:
    expr = expr.replace(
        lambda e: isinstance(e, sp.Indexed) and e.base == q,
        lambda e: sp.exp(softcapped(e.indices[0]))
        / sp.Sum(sp.exp(softcapped(k)), (k, 0, C - 1)),
    )
    return expand_notation(expr)


@cache
def softcapping() -> Derivation:
    """u = s tanh(z/s), q = softmax(u): dL/dz_i = (q_i - y_i)(1 - tanh^2(z_i/s))."""
    u_norm = sp.Sum(sp.exp(softcapped(k)), (k, 0, C - 1))
    loss = -class_sum(y[k] * (softcapped(k) - sp.log(u_norm)))
    factor = 1 - sp.tanh(z[i] / cap) ** 2
    b = _differentiate(
        "softcap: dL/dz_i = (q_i - y_i)(1 - tanh^2(z_i/s))", loss,
        "Softcapping feeds u_k = s tanh(z_k/s) to the softmax q = softmax(u); "
        "L = -sum_k y_k log q_k = -sum_k y_k (u_k - log sum_j exp(u_j)).",
        prepare=_expand_softcap)
    b.then(_on_classes((q[i] * class_sum(y[k]) - y[i]) * factor),
           "definition of q_i; du_i/dz_i = 1 - tanh^2(z_i/s) (chain rule)")
    b.then((q[i] * class_sum(y[k]) - y[i]) * factor, "restriction to a class index",
           assumptions=[class_index(i)])
    b.then((q[i] - y[i]) * factor, "substitution of an assumption",
           assumptions=[targets_sum_to_one()])
    return b.build()


def option_derivations() -> tuple[Derivation, ...]:
    return (class_weights(), label_smoothing(), weighted_label_smoothing(),
            weighted_probability_targets(), z_loss(), softcapping())

