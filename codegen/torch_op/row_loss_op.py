"""The row losses (a loss definition's kind "index" or "teacher") as one PyTorch op,
``gradsmith::row_loss``, on the generated C kernels for CPU tensors (float32/float64; half
types are computed in float32).  The teacher of a "teacher" loss gets no gradient.

The forward keeps the gradient at grad_output = 1 (per row for "none"); the backward scales it.
"""

from __future__ import annotations

import gradsmith
import torch
from gradsmith.codegen.torch_op.kernel import _omp_set_num_threads
from gradsmith.codegen.torch_op.scaled_gradient import scaled_gradient_op
from gradsmith.derive.losses import definition
from gradsmith.derive.row_loss import LossDefinition
from torch import Tensor

_NO_INDEX = -100


def _arithmetic(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("gradsmith::row_loss", mutates_args=())
def row_loss_op(loss: str, logits: Tensor, second: Tensor, alpha: Tensor | None,
                ignore_index: int, reduction: str, options: list[float]) -> tuple[Tensor, Tensor]:
    """(loss, dlogits) of the loss named ``loss``; ``second`` is the target or teacher logits."""
    dtype = _arithmetic(logits.dtype)
    setter = _omp_set_num_threads()  # the process's OpenMP runtime, shared by every kernel
    if setter is not None:
        setter(torch.get_num_threads())
    kernel = gradsmith.load("c", str(dtype).removeprefix("torch."), loss=loss)
    names = [o.name for o in kernel_definition(loss).options]
    extra = {} if alpha is None else {"alpha": alpha.detach().to(dtype).contiguous().numpy()}
    if kernel_definition(loss).kind == "teacher":
        second_np = second.detach().to(dtype).contiguous().numpy()
    else:
        second_np = second.detach().to(torch.int64).contiguous().numpy()
        extra["ignore_index"] = ignore_index
    value, dlogits = kernel(logits.detach().to(dtype).contiguous().numpy(), second_np,
                            reduction=reduction, **extra, **dict(zip(names, options)))
    return torch.as_tensor(value).clone(), torch.from_numpy(dlogits).to(logits.dtype)


@row_loss_op.register_fake
def _(loss, logits, second, alpha, ignore_index, reduction, options):
    shape = (logits.shape[0],) if reduction == "none" else ()
    return (logits.new_empty(shape, dtype=_arithmetic(logits.dtype)),
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


def kernel_definition(name: str) -> LossDefinition:
    return definition(name)


def row_loss(spec: LossDefinition, input: Tensor, second: Tensor, *,
             alpha: Tensor | None = None, ignore_index: int = _NO_INDEX, reduction: str,
             **options: float) -> Tensor:
    """``spec``'s loss on (N, C) or (C,) logits, its arguments checked from the definition."""
    name = spec.name
    if not isinstance(input, Tensor) or not isinstance(second, Tensor):
        raise TypeError("input and its target/teacher must be torch.Tensors")
    if input.device.type != "cpu":
        raise NotImplementedError(f"gradsmith.torch.{name} has CPU kernels only, got device "
                                  f"{input.device}")
    if input.dim() not in (1, 2):
        raise ValueError(f"input must have shape (C,) or (N, C), got {tuple(input.shape)}")
    unknown = sorted(set(options) - {o.name for o in spec.options})
    if unknown:
        raise TypeError(f"{name} has no option {unknown[0]!r}")
    values = []
    for option in spec.options:
        value = options.get(option.name, option.default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{option.name} must be a real number, got {type(value).__name__}")
        value = float(value)
        too_low = option.low is not None and (value <= option.low if option.low_open
                                              else value < option.low)
        if too_low or (option.high is not None and value > option.high):
            raise ValueError(f"{option.name} out of range, got {value:g}")
        values.append(value)
    reductions = [r.name for r in spec.reductions]
    if reduction not in reductions:
        raise ValueError(f"reduction must be one of {tuple(reductions)}, got {reduction!r}")
    rows = input[None] if input.dim() == 1 else input
    if spec.kind == "teacher":
        if second.shape != input.shape:
            raise ValueError(f"teacher_logits must have shape {tuple(input.shape)}, got "
                             f"{tuple(second.shape)}")
        second = second.detach()
    second = second[None] if input.dim() == 1 else second
    loss, _ = row_loss_op(name, rows, second, alpha, int(ignore_index), reduction, values)
    return loss[0] if input.dim() == 1 and reduction == "none" else loss


# Resolved on import: torch.compile does not trace the definitions' module lookup.
_FOCAL = kernel_definition("focal")
_DISTILL_KL = kernel_definition("distill_kl")


def focal_loss(input: Tensor, target: Tensor, gamma: float = 2.0, alpha: Tensor | None = None,
               ignore_index: int = _NO_INDEX, reduction: str = "mean") -> Tensor:
    """Softmax focal loss -alpha_t (1 - p_t)^gamma log p_t; "mean" over the counted rows."""
    return row_loss(_FOCAL, input, target, alpha=alpha, ignore_index=ignore_index,
                    reduction=reduction, gamma=gamma)


def distill_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
               reduction: str = "batchmean") -> Tensor:
    """T^2 KL(teacher_T || student_T); the teacher is detached (its grad stays None)."""
    return row_loss(_DISTILL_KL, student_logits, teacher_logits, reduction=reduction,
                    temperature=temperature)
