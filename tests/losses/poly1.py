"""Poly-1 (Leng et al., 2022): cross-entropy plus epsilon (1 - p_t), a loss from outside gradsmith."""

import sympy as sp
from gradsmith.derive.row_loss_definition import LossDefinition, Option


def loss(row, epsilon):
    log_p_t = row.log_p(row.t)
    return -log_p_t + epsilon * (1 - sp.exp(log_p_t))


DEFINITION = LossDefinition(
    name="poly1",
    title="Poly-1 loss",
    kind="index",
    loss=loss,
    options=(Option("epsilon", 1.0, low=-1.0, doc="weight of the first polynomial term"),),
    assumptions=("0 <= t < C",),
    reduces_to=(("epsilon = 0 gives cross-entropy", {"epsilon": 0}, "cross_entropy"),),
)
