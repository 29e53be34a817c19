"""Argument checks shared by the LLM-scale ops, before any work is done (so a bad call fails
with a message naming the argument, not deep inside a chunk loop or a collective)."""

from __future__ import annotations

import math
import numbers

import torch
from gradsmith.codegen.arguments import check_ignore_index, check_reduction


def check_options(
    *,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    lse_square_scale: float,
    softcap: float | None,
) -> tuple[int, str, float, float, float | None]:
    """The cross-entropy options, checked and normalised to Python numbers."""
    check_reduction(reduction)
    check_ignore_index(ignore_index)
    values = []
    for name, value, high in (("label_smoothing", label_smoothing, 1.0),
                              ("lse_square_scale", lse_square_scale, math.inf)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not (0.0 <= float(value) <= high) or math.isinf(float(value)):
            raise ValueError(f"{name} must be finite and in [0, {high}], got {value}")
        values.append(float(value))
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
            raise TypeError(f"softcap must be a real number or None, got {type(softcap).__name__}")
        if not (0.0 < float(softcap) < math.inf):
            raise ValueError(f"softcap must be positive and finite (or None), got {softcap}")
        softcap = float(softcap)
    return int(ignore_index), reduction, values[0], values[1], softcap


def check_class_weight(name: str, weight: torch.Tensor | None, classes: int,
                       like: torch.Tensor) -> None:
    """A class-weight vector of ``classes`` entries, on ``like``'s device, not differentiated."""
    if weight is None:
        return
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or weight.shape[0] != classes:
        shape = tuple(getattr(weight, "shape", ()))
        raise ValueError(f"{name} must be a tensor of shape ({classes},), got {shape}")
    if not weight.is_floating_point() or weight.device != like.device:
        raise TypeError(f"{name} must be a floating tensor on {like.device}, got {weight.dtype} "
                        f"on {weight.device}")
    if weight.requires_grad:
        raise ValueError(f"{name} is not differentiated; pass {name}.detach()")


def check_target(target: torch.Tensor, rows: tuple[int, ...], classes: int,
                 ignore_index: int) -> str:
    """"index" for class indices of shape ``rows``, "probs" for probabilities ``rows + (C,)``."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if tuple(target.shape) == rows and not target.is_floating_point():
        if target.dtype == torch.bool or target.is_complex():
            raise TypeError(f"target of class indices must be an integer tensor, got {target.dtype}")
        return "index"
    if tuple(target.shape) == (*rows, classes) and target.is_floating_point():
        if ignore_index != -100:
            raise ValueError("ignore_index is not supported for probability targets (as in "
                             "PyTorch); leave it at -100")
        if target.requires_grad:
            raise ValueError("the gradient with respect to probability targets is not computed; "
                             "pass target.detach()")
        return "probs"
    raise ValueError(f"target must be integer class indices of shape {rows} or probabilities of "
                     f"shape {(*rows, classes)}, got {target.dtype} of shape {tuple(target.shape)}")
