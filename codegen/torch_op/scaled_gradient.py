"""A backward op that scales a kernel's saved gradient by grad_output and refuses a second
derivative (the gradient comes from a kernel, not from differentiable torch operations), and
the saved gradient handed back as it is where grad_output is exactly 1."""

from __future__ import annotations

import torch
from gradsmith.codegen.torch_op.eager import is_eager, may_hand_back
from gradsmith.codegen.torch_op.kernel import new_rows
from torch import Tensor


def scaled_gradient_op(name: str, no_second_derivative: str):
    """Registers ``gradsmith::NAME(dlogits, grad_loss)``: dlogits scaled by grad_loss (() or
    (N,)); its own backward raises RuntimeError(no_second_derivative)."""

    @torch.library.custom_op(f"gradsmith::{name}", mutates_args=())
    def op(dlogits: Tensor, grad_loss: Tensor) -> Tensor:
        scale = grad_loss if grad_loss.dim() == 0 else grad_loss[:, None]
        return torch.mul(dlogits, scale, out=new_rows(dlogits))

    @op.register_fake
    def _(dlogits, grad_loss):
        return torch.empty_like(dlogits)

    def refuse(ctx, grad):
        raise RuntimeError(no_second_derivative)

    op.register_autograd(refuse)
    return op


def scale_saved_gradient(op, ctx, dlogits: Tensor, grad_loss: Tensor) -> Tensor:
    """``op(dlogits, grad_loss)``, or ``dlogits`` itself where ``may_hand_back(grad_loss)``
    (``loss.backward()`` on the CPU) on the eager path: that saves an N x C copy per step.
    Only there, because there the op's dlogits output never reaches the caller, who would
    otherwise hold memory that autograd makes ``.grad``."""
    if is_eager(ctx) and may_hand_back(grad_loss):
        return dlogits
    return op(dlogits, grad_loss)
