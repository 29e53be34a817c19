"""The row losses (a loss definition's kind "index" or "teacher") as one PyTorch op,
``gradsmith::row_loss``, on the generated C kernels for CPU tensors in float32/float64 (as
cross-entropy's CPU kernels, other dtypes raise TypeError; the loss and the gradient come back
in the input's dtype).  The teacher of a "teacher" loss gets no gradient.

The forward keeps the gradient at grad_output = 1 (per row for "none"); the backward scales it.
"""

from __future__ import annotations

import torch
from gradsmith.codegen.arguments import check_ignore_index, check_reduction
from gradsmith.codegen.row_loss_runtime import option_values
from gradsmith.codegen.torch_op.checks import check_class_weight, check_target
from gradsmith.codegen.torch_op.functional import as_rows
from gradsmith.codegen.torch_op.kernel import check_logits, check_tensor
from gradsmith.codegen.torch_op.row_loss_kernel import fused_row_loss
from gradsmith.codegen.torch_op.scaled_gradient import scaled_gradient_op
from gradsmith.derive.losses import definition
from gradsmith.derive.row_loss import LossDefinition
from torch import Tensor

_NO_INDEX = -100


@torch.library.custom_op("gradsmith::row_loss", mutates_args=())
def row_loss_op(loss: str, logits: Tensor, second: Tensor, alpha: Tensor | None,
                ignore_index: int, reduction: str, options: list[float]) -> tuple[Tensor, Tensor]:
    """(loss, dlogits) of the loss named ``loss``; ``second`` is the target or teacher logits."""
    return fused_row_loss(definition(loss), logits, second, alpha, ignore_index, reduction,
                          options)


@row_loss_op.register_fake
def _(loss, logits, second, alpha, ignore_index, reduction, options):
    shape = (logits.shape[0],) if reduction == "none" else ()
    return (logits.new_empty(shape),
            torch.empty_like(logits, memory_format=torch.contiguous_format))


row_loss_backward_op = scaled_gradient_op(
    "row_loss_backward", "gradsmith.torch's row losses (focal_loss, distill_kl) have no second "
    "derivative: their gradient comes from the kernel")


def _setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    # dlogits stays differentiable so that a second derivative reaches the backward op's error.
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, grad_dlogits):
    (dlogits,) = ctx.saved_tensors
    grad = None if grad_loss is None else row_loss_backward_op(dlogits, grad_loss)
    return None, grad, None, None, None, None, None


row_loss_op.register_autograd(_backward, setup_context=_setup_context)


def _cpu_input(function: str, names: tuple[str, str], input, second) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{names[0]} must be a torch.Tensor, got {type(input).__name__}")
    if input.device.type != "cpu":
        raise NotImplementedError(f"gradsmith.torch.{function} has CPU kernels only, got "
                                  f"{names[0]} on {input.device}")
    check_tensor(names[1], second, input.device)


def _scalars(spec: LossDefinition, reduction: str, **options: float) -> list[float]:
    check_reduction(reduction, tuple(r.name for r in spec.reductions))
    return option_values(spec, options)


# Resolved on import: torch.compile does not trace the definitions' module lookup.
_FOCAL = definition("focal")
_DISTILL_KL = definition("distill_kl")


def focal_loss(input: Tensor, target: Tensor, gamma: float = 2.0, alpha: Tensor | None = None,
               ignore_index: int = _NO_INDEX, reduction: str = "mean") -> Tensor:
    """Softmax focal loss -alpha_t (1 - p_t)^gamma log p_t, with ``F.cross_entropy``'s shapes:
    input (C,), (N, C) or (N, C, d1, ..., dk) (classes on dim 1) and class indices of shape
    (), (N,) or (N, d1, ..., dk); "none" gives that shape, "mean" divides by the counted
    positions (NaN if none is counted), "sum" adds them.  ``alpha`` (C,) is a per-class
    weight in the input's dtype."""
    _cpu_input("focal_loss", ("input", "target"), input, target)
    values = _scalars(_FOCAL, reduction, gamma=gamma)
    ignore_index = check_ignore_index(ignore_index)
    rows, row_target, probabilities, positions = as_rows(input, target)
    if probabilities:
        raise ValueError(f"focal_loss takes class indices as target, of shape {positions}, "
                         f"not probabilities of shape {tuple(target.shape)}")
    check_logits(rows)
    check_target(row_target, (rows.shape[0],), rows.shape[1], ignore_index)
    check_class_weight("alpha", alpha, rows.shape[1], rows)
    if alpha is not None and alpha.dtype != rows.dtype:
        raise TypeError(f"alpha must be {rows.dtype} like input, got {alpha.dtype}")
    loss, _ = row_loss_op(_FOCAL.name, rows, row_target, alpha, ignore_index, reduction, values)
    return loss.reshape(positions) if reduction == "none" else loss


def distill_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
               reduction: str = "batchmean") -> Tensor:
    """T^2 KL(teacher_T || student_T) over the last dim, as ``F.kl_div(log_softmax(z / T, -1),
    log_softmax(u / T, -1), log_target=True, reduction=r) * T**2`` on logits of any shape
    (..., C): "batchmean" divides by ``student_logits.size(0)`` (for (C,) that is C, as in
    PyTorch), "mean" by the number of elements, "sum" adds; "none" gives the per-row sums, of
    shape (...).  An empty batch gives NaN for the means, 0 for "sum".  The teacher is
    detached (its grad stays None) and must match the student's shape and dtype."""
    _cpu_input("distill_kl", ("student_logits", "teacher_logits"), student_logits,
               teacher_logits)
    values = _scalars(_DISTILL_KL, reduction, temperature=temperature)
    shape = tuple(student_logits.shape)
    if not shape or shape[-1] < 1:
        raise ValueError(f"student_logits must have shape (..., C) with C >= 1, got {shape}")
    if tuple(teacher_logits.shape) != shape:
        raise ValueError(f"teacher_logits must have shape {shape}, got "
                         f"{tuple(teacher_logits.shape)}")
    if teacher_logits.dtype != student_logits.dtype:
        raise TypeError(f"teacher_logits must be {student_logits.dtype} like student_logits, "
                        f"got {teacher_logits.dtype}")
    rows = student_logits.reshape(-1, shape[-1])
    check_logits(rows)
    # F.kl_div's "batchmean" divides by size(0), which is the number of rows only for (N, C).
    by_batch = reduction == "batchmean" and len(shape) != 2
    loss, _ = row_loss_op(_DISTILL_KL.name, rows, teacher_logits.detach().reshape(-1, shape[-1]),
                          None, _NO_INDEX, "sum" if by_batch else reduction, values)
    if reduction == "none":
        return loss.reshape(shape[:-1])
    return loss / shape[0] if by_batch else loss


# The gradsmith.torch function of each loss that has one, by the loss's name.
FUNCTIONS = {_FOCAL.name: focal_loss, _DISTILL_KL.name: distill_kl}
