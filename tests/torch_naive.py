"""Naive PyTorch cross-entropy with autograd, z-loss and softcapping written from their
definitions: the independent reference of the LLM-scale ops' tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_cross_entropy(logits, target, options: dict, reduction: str):
    """``F.cross_entropy`` of ``s tanh(z / s)`` plus ``lse_square_scale * lse^2`` per counted row,
    reduced as PyTorch reduces (the "mean" divides by the counted rows' class weights; its
    z-term by the number of counted rows)."""
    softcap = options.get("softcap")
    transformed = softcap * torch.tanh(logits / softcap) if softcap else logits
    kwargs = {k: v for k, v in options.items() if k in ("weight", "ignore_index", "label_smoothing")}
    scale = options.get("lse_square_scale", 0.0)
    if not scale:
        return F.cross_entropy(transformed, target, reduction=reduction, **kwargs)
    rows = F.cross_entropy(transformed, target, reduction="none", **kwargs)
    if target.is_floating_point():
        counted = torch.ones(rows.shape, dtype=logits.dtype)
        row_weight = counted
    else:
        counted = (target != kwargs.get("ignore_index", -100)).to(logits.dtype)
        weight = kwargs.get("weight")
        row_weight = counted if weight is None else weight[target.clamp(0)] * counted
    z_term = scale * torch.logsumexp(transformed, 1) ** 2 * counted
    if reduction == "none":
        return rows + z_term
    if reduction == "sum":
        return (rows + z_term).sum()
    # The mean z-loss is over the counted rows, whatever the class weights.
    return rows.sum() / row_weight.sum() + z_term.sum() / counted.sum()
