"""The row losses by their definitions in torch ops (autograd gives their gradients): the
references of gradsmith.torch's focal_loss and distill_kl on every device."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_reference(z, t, gamma, alpha, ignore_index, reduction):
    """-alpha_t (1 - p_t)^gamma log p_t over the counted rows; "mean" divides by their number."""
    counted = t != ignore_index
    safe = torch.where(counted, t, 0)
    log_p_t = torch.log_softmax(z, -1).gather(1, safe[:, None])[:, 0]
    a = torch.ones_like(log_p_t) if alpha is None else alpha[safe]
    rows = torch.where(counted, -a * (-torch.expm1(log_p_t)) ** gamma * log_p_t, 0)
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / counted.sum()


def kl_reference(z, u, temperature, reduction):
    """T^2 KL(softmax(u / T) || softmax(z / T)) as F.kl_div gives it; "none" sums each row."""
    log_p = torch.log_softmax(z / temperature, -1)
    log_q = torch.log_softmax(u / temperature, -1)
    if reduction == "none":
        return F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1) * temperature**2
    return F.kl_div(log_p, log_q, log_target=True, reduction=reduction) * temperature**2
