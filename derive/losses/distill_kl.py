"""Knowledge-distillation KL divergence with a temperature (Hinton et al., 2015).

With q = softmax(u / T) of the teacher and p = softmax(z / T) of the student,
loss = T^2 sum_j q_j (log q_j - log p_j); its gradient with respect to the student is
T (p - q).  The teacher's logits get no gradient: they are a target.
"""

from __future__ import annotations

import sympy as sp
from gradsmith.derive.row_loss_definition import LossDefinition, Option, Reduction


def loss(row, temperature) -> sp.Expr:
    return temperature**2 * row.sum(lambda k: row.q(k) * (row.log_q(k) - row.log_p(k)))


def scale(temperature) -> sp.Expr:
    return 1 / temperature


def closed_form(row, temperature) -> sp.Expr:
    """T (p_j - q_j)."""
    j = sp.Symbol("j", integer=True, nonnegative=True)
    return temperature * (row.p(j) - row.q(j))


def torch_rows(torch, logits, teacher, temperature):
    """The same definition in torch (for ``gradsmith bench``)."""
    log_p = torch.log_softmax(logits / temperature, -1)
    log_q = torch.log_softmax(teacher / temperature, -1)
    return temperature**2 * (log_q.exp() * (log_q - log_p)).sum(-1)


DEFINITION = LossDefinition(
    name="distill_kl",
    title="distillation KL divergence",
    kind="teacher",
    loss=loss,
    scale=scale,
    options=(Option("temperature", 1.0, low=0.0, low_open=True, doc="softmax temperature T"),),
    reductions=(
        Reduction("batchmean", "rows"), Reduction("sum", "one"), Reduction("mean", "elements"),
        Reduction("none", None),
    ),
    default_reduction="batchmean",
    assumptions=("T > 0",),
    closed_form=closed_form,
    sample={"temperature": 2.0},
    torch_rows=torch_rows,
)
