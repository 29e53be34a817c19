"""Softmax cross-entropy, PyTorch's ``cross_entropy``: the definition every cross-entropy
kernel is checked against.

The specialised kernels (``gradsmith.derive.kernel_spec``, every option of PyTorch's) are
verified against :func:`loss` for concrete C; the generic pipeline derives the plain
(optionally class-weighted) loss from the same function for symbolic C.
"""

from __future__ import annotations

import sympy as sp
from gradsmith.derive.row_loss_definition import LossDefinition


def smoothed_target(prob: sp.Expr, classes: sp.Expr, label_smoothing: sp.Expr) -> sp.Expr:
    """PyTorch's label smoothing of a probability target: (1 - eps) y + eps / C."""
    return (1 - label_smoothing) * prob + label_smoothing / classes


def loss(row, label_smoothing=0, lse_square_scale=0, probabilities: bool = False) -> sp.Expr:
    """w_t (lse - z_t), with label smoothing, probability targets and z-loss as PyTorch has them."""
    if probabilities:
        ce = -row.sum(lambda k: row.alpha(k) * smoothed_target(row.y(k), row.C, label_smoothing)
                      * row.log_p(k))
    else:
        nll = -row.alpha(row.t) * row.log_p(row.t)
        smooth = -row.sum(lambda k: row.alpha(k) * row.log_p(k))
        ce = (1 - label_smoothing) * nll + label_smoothing / row.C * smooth
    return ce + lse_square_scale * row.lse() ** 2


def closed_form(row) -> sp.Expr:
    """alpha_t (p_j - [j = t])."""
    j = sp.Symbol("j", integer=True, nonnegative=True)
    return row.alpha(row.t) * (row.p(j) - sp.KroneckerDelta(j, row.t))


DEFINITION = LossDefinition(
    name="cross_entropy",
    title="softmax cross-entropy",
    kind="index",
    loss=loss,
    class_weights=True,
    assumptions=("0 <= t < C (an ignored row contributes nothing)",),
    closed_form=closed_form,
)
