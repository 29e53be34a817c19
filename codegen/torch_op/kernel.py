"""One fused cross-entropy forward + backward on torch tensors, by the generated kernels.

No autograd here: this is the raw call that the autograd-aware ops build on.  On CPU it runs
the C kernel (float32 / float64) on NumPy views of the tensors, so nothing is copied when the
gradient is written in place.
"""

from __future__ import annotations

from functools import cache

import gradsmith
import torch

CPU_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


@cache
def _c_kernel(dtype: str):
    return gradsmith.load("c", dtype)


def _array(tensor: torch.Tensor | None):
    return None if tensor is None else tensor.detach().numpy()


def fused_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    grad_output: torch.Tensor | None = None,
    dlogits: torch.Tensor | None = None,
    want_lse: bool = False,
    check_targets: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Loss, d(loss)/d(logits) times ``grad_output`` (None = 1), and the lse if ``want_lse``.

    ``logits`` is (N, C), ``target`` (N,) int64 or (N, C) probabilities; the loss is () or
    (N,) for "none".  The gradient is written into ``dlogits`` when given, which may be
    ``logits`` itself (in place).  The C kernel checks the targets before reading a logit,
    whatever ``check_targets`` says.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.device.type != "cpu" or logits.dtype not in CPU_DTYPES:
        raise ValueError(f"logits must be a float32 or float64 CPU tensor, got {logits.dtype} "
                         f"on {logits.device}")
    if dlogits is not None and (dlogits.shape != logits.shape or dlogits.dtype != logits.dtype
                                or dlogits.device != logits.device):
        raise ValueError(f"dlogits must match logits' shape {tuple(logits.shape)} and dtype "
                         f"{logits.dtype}, got {tuple(dlogits.shape)} {dlogits.dtype}")
    kernel = _c_kernel(CPU_DTYPES[logits.dtype])
    options = {
        "weight": _array(weight), "ignore_index": ignore_index, "reduction": reduction,
        "label_smoothing": label_smoothing, "lse_square_scale": lse_square_scale, "softcap": softcap,
        "grad_output": _array(grad_output), "return_lse": want_lse,
    }
    if dlogits is None:
        result = kernel(_array(logits), _array(target), **options)
    else:
        if dlogits.data_ptr() != logits.data_ptr():
            dlogits.copy_(logits)
        result = kernel(_array(dlogits), _array(target), inplace=True, **options)
    loss = torch.from_numpy(result[0])
    gradient = torch.from_numpy(result[1]) if dlogits is None else dlogits
    lse = torch.from_numpy(result[2]) if want_lse else None
    return loss, gradient, lse
