"""``cross_entropy``: ``torch.nn.functional.cross_entropy``'s signature and shapes on the fused
kernels, plus z-loss, softcapping, a differentiable lse and an in-place-gradient mode."""

from __future__ import annotations

import torch
from gradsmith.codegen.arguments import check_options
from gradsmith.codegen.torch_op.op import InplaceCrossEntropy, cross_entropy_rows
from torch import Tensor


def as_rows(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor, bool, tuple[int, ...]]:
    """(N', C) logits and their targets for PyTorch's shapes (C,), (N, C), (N, C, d1, ...);
    also whether the targets are probabilities and the shape of a per-position result."""
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"input and target must be torch.Tensors, got {type(input).__name__} and "
                        f"{type(target).__name__}")
    if input.dim() == 0:
        raise ValueError("input must have shape (C,), (N, C) or (N, C, d1, ..., dk), got ()")
    probs = target.shape == input.shape
    if probs and not target.dtype.is_floating_point:
        raise TypeError(f"target of the input's shape holds class probabilities and must be "
                        f"floating point, got {target.dtype}")
    if probs and target.requires_grad:
        raise ValueError("target requires grad: gradsmith does not differentiate with respect "
                         "to probability targets; pass target.detach()")
    if input.dim() == 1:
        return input[None], target[None], probs, ()
    classes = input.shape[1]
    positions = (input.shape[0], *input.shape[2:])
    if not probs and tuple(target.shape) != positions:
        raise ValueError(f"target must have shape {positions} (class indices) or "
                         f"{tuple(input.shape)} (probabilities), got {tuple(target.shape)}")
    if input.dim() == 2:
        return input, target, probs, positions
    rows = input.movedim(1, -1).reshape(-1, classes)
    target = target.movedim(1, -1).reshape(-1, classes) if probs else target.reshape(-1)
    return rows, target, probs, positions


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
    inplace_backward: bool = False,
    check_targets: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """``torch.nn.functional.cross_entropy`` computed by gradsmith's fused kernels.

    ``lse_square_scale`` adds z-loss, ``softcap`` caps the logits at ``softcap tanh(z /
    softcap)``; ``return_lse=True`` also returns the (differentiable) per-position lse.
    ``inplace_backward=True`` writes the gradient over ``input`` (2-D, not needed elsewhere:
    autograd raises if it is).  ``check_targets=False`` skips the bad-target check, the one
    host synchronisation on CUDA.  See the README for the semantics and differences.
    """
    if not isinstance(return_lse, bool) or not isinstance(inplace_backward, bool):
        raise TypeError("return_lse and inplace_backward must be bools")
    if not isinstance(check_targets, bool):
        raise TypeError(f"check_targets must be a bool, got {type(check_targets).__name__}")
    rows, row_target, _, positions = as_rows(input, target)
    # Checked here too, so that the op's float arguments are Python floats in range.
    label_smoothing, lse_square_scale, softcap = check_options(
        "float64" if input.dtype == torch.float64 else "float32", ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing, lse_square_scale=lse_square_scale,
        softcap=softcap)
    options = (ignore_index, reduction, label_smoothing, lse_square_scale, softcap)
    if inplace_backward:
        if return_lse:
            raise ValueError("return_lse=True needs the logits in the backward: it cannot be "
                             "combined with inplace_backward=True")
        if input.dim() != 2:
            raise ValueError("inplace_backward=True needs 2-D input (N, C), got shape "
                             f"{tuple(input.shape)}")
        if input.is_leaf and input.requires_grad:
            raise ValueError("inplace_backward=True would overwrite a leaf tensor that requires "
                             "grad; pass logits computed from it, or inplace_backward=False")
        loss, _ = InplaceCrossEntropy.apply(input, row_target, weight, *options, check_targets)
        return loss
    loss, lse, _ = cross_entropy_rows(rows, row_target, weight, *options, return_lse,
                                      check_targets)
    if reduction == "none":
        loss = loss.reshape(positions)
    if return_lse:
        return loss, lse.reshape(positions)
    return loss
