"""Softmax focal loss (Lin et al., 2017, "Focal Loss for Dense Object Detection").

loss = -alpha_t (1 - p_t)^gamma log p_t.  gamma = 0 is cross-entropy; a larger gamma
down-weights rows the model already gets right.  "mean" divides by the number of counted rows
(as torchvision's ``sigmoid_focal_loss`` and most softmax ports do), not by the sum of alpha_t.
"""

from __future__ import annotations

import sympy as sp
from gradsmith.derive.row_loss_definition import LossDefinition, Option


def loss(row, gamma) -> sp.Expr:
    log_p_t = row.log_p(row.t)
    return -row.alpha(row.t) * (1 - sp.exp(log_p_t)) ** gamma * log_p_t


def closed_form(row, gamma) -> sp.Expr:
    """alpha_t (1 - p_t)^(gamma - 1) ((1 - p_t) - gamma p_t log p_t) (p_j - [j = t])."""
    j = sp.Symbol("j", integer=True, nonnegative=True)
    p_t, log_p_t = row.p(row.t), row.log_p(row.t)
    factor = (1 - p_t) ** gamma - gamma * (1 - p_t) ** (gamma - 1) * p_t * log_p_t
    return row.alpha(row.t) * factor * (row.p(j) - sp.KroneckerDelta(j, row.t))


def torch_rows(torch, logits, target, gamma):
    """The same definition in torch (for ``gradsmith bench``)."""
    log_p_t = torch.log_softmax(logits, -1).gather(1, target[:, None])[:, 0]
    return -((1 - log_p_t.exp()) ** gamma) * log_p_t


DEFINITION = LossDefinition(
    name="focal",
    title="softmax focal loss",
    kind="index",
    loss=loss,
    options=(Option("gamma", 2.0, low=0.0, doc="focusing parameter"),),
    class_weights=True,
    assumptions=("0 <= t < C (an ignored row contributes nothing)", "gamma >= 0"),
    closed_form=closed_form,
    reduces_to=(("gamma = 0 gives cross-entropy", {"gamma": 0}, "cross_entropy"),),
    sample={"gamma": 2.0},
    torch_rows=torch_rows,
)
