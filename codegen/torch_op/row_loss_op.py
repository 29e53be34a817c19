"""The row losses (a loss definition's kind "index" or "teacher") as one PyTorch op,
``gradsmith::row_loss``: the generated C kernels for CPU tensors in float32/float64 (as
cross-entropy's CPU kernels, other dtypes raise TypeError), the generated CUDA launchers for
CUDA tensors in float32/float64/bfloat16/float16; the loss and the gradient come back in the
input's dtype.  The teacher of a "teacher" loss gets no gradient.

The forward keeps the gradient at grad_output = 1 (per row for "none"); the backward scales it,
or hands it back as it is for grad_output 1.  ``row_loss_rows`` calls the op, or its eager
path where nothing traces (``eager.py``).
"""

from __future__ import annotations

import torch
from gradsmith.codegen.arguments import check_ignore_index, check_reduction
from gradsmith.codegen.row_loss import SPECIALISED
from gradsmith.codegen.row_loss_runtime import option_values
from gradsmith.codegen.torch_op.checks import check_class_weight, check_target
from gradsmith.codegen.torch_op.eager import with_eager_path
from gradsmith.codegen.torch_op.functional import as_rows
from gradsmith.codegen.torch_op.kernel import check_logits, check_tensor
from gradsmith.codegen.torch_op.row_loss_kernel import fused_row_loss
from gradsmith.codegen.torch_op.scaled_gradient import scale_saved_gradient, scaled_gradient_op
from gradsmith.derive.losses import LOSSES, definition
from gradsmith.derive.row_loss import LossDefinition
from torch import Tensor

_NO_INDEX = -100


def _row_loss(loss: str, logits: Tensor, second: Tensor, alpha: Tensor | None,
              ignore_index: int, reduction: str, options: list[float],
              check_targets: bool) -> tuple[Tensor, Tensor]:
    """(loss, dlogits) of the loss named ``loss``; ``second`` is the target or teacher logits;
    ``check_targets=False`` skips the bad-target check (CUDA's one host synchronisation)."""
    return fused_row_loss(definition(loss), logits, second, alpha, ignore_index, reduction,
                          options, check_targets)


row_loss_op = torch.library.custom_op("gradsmith::row_loss", _row_loss, mutates_args=())


@row_loss_op.register_fake
def _(loss, logits, second, alpha, ignore_index, reduction, options, check_targets):
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
    grad = (None if grad_loss is None
            else scale_saved_gradient(row_loss_backward_op, ctx, dlogits, grad_loss))
    return None, grad, None, None, None, None, None, None


row_loss_op.register_autograd(_backward, setup_context=_setup_context)
row_loss_rows = with_eager_path("GradsmithRowLoss", row_loss_op, _row_loss, _setup_context,
                                _backward)


def _check_input(names: tuple[str, str], input, second) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{names[0]} must be a torch.Tensor, got {type(input).__name__}")
    check_tensor(names[1], second, input)


def _check_rows(rows: Tensor) -> None:
    """Rows the device's kernels run; meta tensors go to the op's fake, which needs no kernel."""
    if rows.device.type != "meta":
        check_logits(rows)


def _scalars(spec: LossDefinition, reduction: str, **options: float) -> list[float]:
    check_reduction(reduction, tuple(r.name for r in spec.reductions))
    return option_values(spec, options)


# Resolved on import: torch.compile does not trace the definitions' module lookup.
_DEFINITIONS = {name: definition(name) for name in LOSSES if name not in SPECIALISED}
REGISTERED = tuple(_DEFINITIONS)  # the losses row_loss takes by name
_FOCAL = _DEFINITIONS["focal"]
_DISTILL_KL = _DEFINITIONS["distill_kl"]


def row_loss(loss: str, input: Tensor, second: Tensor, *, reduction: str | None = None,
             alpha: Tensor | None = None, ignore_index: int = _NO_INDEX,
             check_targets: bool = True, **options: float) -> Tensor:
    """Any registered row loss by name, its options as keywords (default: the definition's):
    an "index" loss takes ``F.cross_entropy``'s shapes and targets (as :func:`focal_loss`), a
    "teacher" loss logits and teacher logits of one shape (..., C) (as :func:`distill_kl`).
    ``reduction=None`` is the definition's default."""
    spec = _DEFINITIONS.get(loss) if isinstance(loss, str) else None
    if spec is None:
        hint = " (cross_entropy: gradsmith.torch.cross_entropy)" if loss in SPECIALISED else ""
        raise ValueError(f"loss must be one of {tuple(_DEFINITIONS)}{hint}, got {loss!r}")
    reduction = spec.default_reduction if reduction is None else reduction
    if spec.kind == "teacher":
        if alpha is not None or ignore_index != _NO_INDEX:
            raise ValueError(f"{spec.name} takes teacher logits: no alpha and no ignore_index")
        return _teacher_loss(spec, input, second, reduction, options)
    return _index_loss(spec, input, second, alpha, ignore_index, reduction, check_targets,
                       options)


def _index_loss(spec: LossDefinition, input, target, alpha, ignore_index, reduction,
                check_targets, options: dict) -> Tensor:
    if not isinstance(check_targets, bool):
        raise TypeError(f"check_targets must be a bool, got {type(check_targets).__name__}")
    _check_input(("input", "target"), input, target)
    values = _scalars(spec, reduction, **options)
    if not spec.class_weights and alpha is not None:
        raise ValueError(f"{spec.name} takes no alpha (class weights)")
    ignore_index = check_ignore_index(ignore_index)
    rows, row_target, probabilities, positions = as_rows(input, target)
    if probabilities:
        raise ValueError(f"{spec.name} takes class indices as target, of shape {positions}, "
                         f"not probabilities of shape {tuple(target.shape)}")
    _check_rows(rows)
    check_target(row_target, (rows.shape[0],), rows.shape[1], ignore_index)
    check_class_weight("alpha", alpha, rows.shape[1], rows)
    if alpha is not None and alpha.dtype != rows.dtype:
        raise TypeError(f"alpha must be {rows.dtype} like input, got {alpha.dtype}")
    loss, _ = row_loss_rows(spec.name, rows, row_target, alpha, ignore_index, reduction, values,
                            check_targets)
    return loss.reshape(positions) if reduction == "none" else loss


def _teacher_loss(spec: LossDefinition, student_logits, teacher_logits, reduction,
                  options: dict) -> Tensor:
    _check_input(("student_logits", "teacher_logits"), student_logits, teacher_logits)
    values = _scalars(spec, reduction, **options)
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
    _check_rows(rows)
    # F.kl_div's "batchmean" divides by size(0), which is the number of rows only for (N, C).
    by_batch = reduction == "batchmean" and len(shape) != 2
    loss, _ = row_loss_rows(spec.name, rows, teacher_logits.detach().reshape(-1, shape[-1]),
                            None, _NO_INDEX, "sum" if by_batch else reduction, values, True)
    if reduction == "none":
        return loss.reshape(shape[:-1])
    return loss / shape[0] if by_batch else loss


def focal_loss(input: Tensor, target: Tensor, gamma: float = 2.0, alpha: Tensor | None = None,
               ignore_index: int = _NO_INDEX, reduction: str = "mean", *,
               check_targets: bool = True) -> Tensor:
    """Softmax focal loss -alpha_t (1 - p_t)^gamma log p_t, with ``F.cross_entropy``'s shapes:
    input (C,), (N, C) or (N, C, d1, ..., dk) (classes on dim 1) and class indices of shape
    (), (N,) or (N, d1, ..., dk); "none" gives that shape, "mean" divides by the counted
    positions (NaN if none is counted), "sum" adds them.  ``alpha`` (C,) is a per-class
    weight in the input's dtype.  ``check_targets=False`` skips the bad-target check, the one
    host synchronisation on CUDA (bad rows are then NaN)."""
    return _index_loss(_FOCAL, input, target, alpha, ignore_index, reduction, check_targets,
                       {"gamma": gamma})


def distill_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
               reduction: str = "batchmean") -> Tensor:
    """T^2 KL(teacher_T || student_T) over the last dim, as ``F.kl_div(log_softmax(z / T, -1),
    log_softmax(u / T, -1), log_target=True, reduction=r) * T**2`` on logits of any shape
    (..., C): "batchmean" divides by ``student_logits.size(0)`` (for (C,) that is C, as in
    PyTorch), "mean" by the number of elements, "sum" adds; "none" gives the per-row sums, of
    shape (...).  An empty batch gives NaN for the means, 0 for "sum".  The teacher is
    detached (its grad stays None) and must match the student's shape and dtype."""
    return _teacher_loss(_DISTILL_KL, student_logits, teacher_logits, reduction,
                         {"temperature": temperature})

