"""References for the tests: the shipped mpmath reference and finite differences
(``gradsmith.codegen.validate.reference``), and ``torch_reference``, the same quantities from
PyTorch and autograd (which validates the mpmath reference).
"""

from __future__ import annotations

import numpy as np
from gradsmith.codegen.validate.reference import (  # noqa: F401 - re-exported for the tests
    DIGITS,
    REDUCTIONS,
    finite_difference_grad,
    reference_cross_entropy,
)


def torch_reference(
    logits,
    target,
    *,
    weight=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    grad_output=None,
    return_lse: bool = False,
):
    """The same quantities from ``torch.nn.functional.cross_entropy`` and autograd, in float64.

    Without z-loss and softcapping this is PyTorch's own reduction; with either, the loss is
    the plain expression of the definition: per-row cross-entropy of ``s*tanh(z/s)`` plus
    ``lse_square_scale * logsumexp^2`` on the rows that count, reduced like PyTorch reduces the
    row loss, except that a mean divides the z-term by the number of counted rows.  ``ignore_index`` is passed to PyTorch only with index targets.
    """
    import torch
    import torch.nn.functional as F

    # Tiny tensors: one thread avoids paying for thread wake-ups on a loaded machine.
    torch.set_num_threads(1)
    z = torch.tensor(np.asarray(logits, dtype=np.float64), requires_grad=True)
    target_array = np.asarray(target)
    probs = np.issubdtype(target_array.dtype, np.floating)
    t = torch.tensor(target_array.astype(np.float64 if probs else np.int64))
    w = None if weight is None else torch.tensor(np.asarray(weight, dtype=np.float64))
    options = {"weight": w, "label_smoothing": float(label_smoothing)}
    if not probs:
        options["ignore_index"] = int(ignore_index)
    capped = z if softcap is None else softcap * torch.tanh(z / softcap)
    lse = torch.logsumexp(capped, dim=1)
    if lse_square_scale == 0.0 and softcap is None:
        loss = F.cross_entropy(capped, t, reduction=reduction, **options)
    else:
        rows = F.cross_entropy(capped, t, reduction="none", **options)
        counted = torch.ones_like(lse, dtype=torch.bool) if probs else t != ignore_index
        z_rows = torch.where(counted, lse_square_scale * lse**2, torch.zeros_like(lse))
        rows = rows + z_rows
        if reduction == "none":
            loss = rows
        elif reduction == "sum":
            loss = rows.sum()
        else:
            if probs:
                denominator = torch.tensor(float(len(rows)), dtype=torch.float64)
            elif w is None:
                denominator = counted.sum().to(torch.float64)
            else:
                denominator = w[t[counted]].sum()
            # The z-term is a mean over the counted rows, whatever the class weights.
            loss = (rows - z_rows).sum() / denominator + z_rows.sum() / counted.sum()
    if reduction == "none":
        upstream = torch.ones_like(loss) if grad_output is None else torch.as_tensor(
            np.broadcast_to(np.asarray(grad_output, dtype=np.float64), loss.shape).copy()
        )
    else:
        upstream = torch.tensor(1.0 if grad_output is None else float(grad_output), dtype=torch.float64)
    loss.backward(upstream)
    result = (loss.detach().numpy().astype(np.float64), z.grad.numpy().astype(np.float64))
    if return_lse:
        result += (lse.detach().numpy().astype(np.float64),)
    return result
