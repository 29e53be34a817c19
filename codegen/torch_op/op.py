"""The cross-entropy as PyTorch ops on (N, C) logits: ``gradsmith::cross_entropy`` (functional,
with a fake and an autograd formula), its backward op, and the in-place-gradient mode.

The forward runs the fused kernel once and keeps only the gradient of the returned loss at
grad_output = 1; the backward scales it by the incoming grad_output (per row for "none"), or
hands it back as it is for grad_output 1.  ``cross_entropy_rows`` calls the op, or its eager path
where nothing traces (``eager.py``).
``lse``'s gradient is softmax(u) du/dz with u the (softcapped) logits, from torch's own
softmax: the only case where the logits are kept for the backward.
"""

from __future__ import annotations

import torch
from gradsmith.codegen.torch_op.eager import with_eager_path
from gradsmith.codegen.torch_op.kernel import arithmetic_dtype, fused_cross_entropy
from gradsmith.codegen.torch_op.scaled_gradient import scale_saved_gradient, scaled_gradient_op
from torch import Tensor

DOUBLE_BACKWARD = (
    "gradsmith.torch.cross_entropy has no second derivative: its gradient comes from the fused "
    "kernel. Use torch.nn.functional.cross_entropy where higher derivatives are needed."
)


def _fused(logits, target, weight, ignore_index, reduction, label_smoothing, lse_square_scale,
           softcap, want_lse, check_targets):
    """(loss, lse, dlogits): lse is None unless ``want_lse``; dlogits is d(loss)/d(logits) at
    grad_output = 1.  The eager path's implementation: a Function's outputs may be None, and
    an empty lse would cost an allocation and an output, 3 us a step."""
    loss, dlogits, lse = fused_cross_entropy(
        logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, lse_square_scale=lse_square_scale, softcap=softcap,
        want_lse=want_lse, check_targets=check_targets)
    return loss, lse, dlogits


def _cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    lse_square_scale: float,
    softcap: float | None,
    want_lse: bool,
    check_targets: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The op's implementation: ``_fused``, its lse empty unless ``want_lse`` (an op's outputs
    are tensors)."""
    loss, lse, dlogits = _fused(logits, target, weight, ignore_index, reduction, label_smoothing,
                                lse_square_scale, softcap, want_lse, check_targets)
    if lse is None:
        lse = logits.new_empty((0,), dtype=arithmetic_dtype(logits.dtype))
    return loss, lse, dlogits


cross_entropy_op = torch.library.custom_op("gradsmith::cross_entropy", _cross_entropy,
                                           mutates_args=())


@cross_entropy_op.register_fake
def _(logits, target, weight, ignore_index, reduction, label_smoothing, lse_square_scale,
      softcap, want_lse, check_targets):
    aux = arithmetic_dtype(logits.dtype)
    n_rows = logits.shape[0]
    loss = logits.new_empty((n_rows,) if reduction == "none" else (), dtype=aux)
    lse = logits.new_empty((n_rows,) if want_lse else (0,), dtype=aux)
    return loss, lse, torch.empty_like(logits, memory_format=torch.contiguous_format)


cross_entropy_backward_op = scaled_gradient_op("cross_entropy_backward", DOUBLE_BACKWARD)


def lse_gradient(logits: Tensor, grad_lse: Tensor, softcap: float | None) -> Tensor:
    """d(sum_n g_n lse_n)/d(logits): g softmax(u) du/dz, u = softcap tanh(z / softcap)."""
    z = logits.to(grad_lse.dtype)
    if softcap is None:
        return (grad_lse[:, None] * torch.softmax(z, dim=1)).to(logits.dtype)
    capped = torch.tanh(z / softcap)
    slope = 1 - capped * capped
    return (grad_lse[:, None] * torch.softmax(softcap * capped, dim=1) * slope).to(logits.dtype)


def _setup_context(ctx, inputs, output):
    logits = inputs[0]
    ctx.softcap, ctx.want_lse = inputs[7], inputs[8]
    ctx.set_materialize_grads(False)  # no N x C zeros for the unused dlogits output
    # dlogits stays differentiable so that a second derivative reaches the backward op's error.
    ctx.save_for_backward(output[2], logits if ctx.want_lse else None)


def _backward(ctx, grad_loss, grad_lse, grad_dlogits):
    dlogits, logits = ctx.saved_tensors
    grad = None
    if grad_loss is not None:
        grad = scale_saved_gradient(cross_entropy_backward_op, ctx, dlogits, grad_loss)
    if ctx.want_lse and grad_lse is not None:
        extra = lse_gradient(logits, grad_lse, ctx.softcap)
        grad = extra if grad is None else grad + extra
    return grad, None, None, None, None, None, None, None, None, None


cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)
cross_entropy_rows = with_eager_path("GradsmithCrossEntropy", cross_entropy_op, _fused,
                                     _setup_context, _backward)


class InplaceCrossEntropy(torch.autograd.Function):
    """The loss, with its gradient written over the logits (marked dirty, so autograd's
    version counter refuses any later use of the old values)."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, label_smoothing,
                lse_square_scale, softcap, check_targets):
        loss, _, _ = fused_cross_entropy(
            logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, lse_square_scale=lse_square_scale,
            softcap=softcap, dlogits=logits, check_targets=check_targets)
        ctx.mark_dirty(logits)
        ctx.mark_non_differentiable(logits)
        ctx.save_for_backward(logits)
        return loss, logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_dlogits):
        (dlogits,) = ctx.saved_tensors
        # Scaled where it lies: a second backward through this graph then fails the version
        # check instead of reading a scaled gradient.
        dlogits.mul_(grad_loss if grad_loss.dim() == 0 else grad_loss[:, None])
        return dlogits, None, None, None, None, None, None, None, None
