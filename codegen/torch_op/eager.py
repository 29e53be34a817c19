"""The eager path of gradsmith's custom ops: the same implementation and autograd formula
through a ``torch.autograd.Function``, for plain tensors outside any tracing.

``torch.library.custom_op`` is what makes the ops traceable (``torch.compile``, fake tensors,
``opcheck``), but an eager call goes through the dispatcher into Python twice, forward and
backward: about 0.1 ms per step, twice the whole kernel at classifier shapes.  Where
nothing traces, an autograd Function with the op's own ``setup_context`` and backward gives the
same results without that cost; anything else (compiling, a dispatch mode, a tensor subclass,
functorch transforms) gets the op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def plain(*values: Any) -> bool:
    """Whether nothing traces a call on ``values``: no compiler, no dispatch mode, no functorch
    transform, and every tensor among them a plain CPU or CUDA tensor (not meta, fake,
    functional or a subclass)."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    if torch._C._are_functorch_transforms_active():
        return False
    for value in values:  # a loop, not all() over a generator: a microsecond a call
        if isinstance(value, torch.Tensor) and (
                type(value) not in _PLAIN or not (value.is_cpu or value.is_cuda)):
            return False
    return True


def may_hand_back(grad_loss: torch.Tensor) -> bool:
    """Whether a backward may return its saved gradients as they are for ``grad_loss``: a
    scalar exactly 1, asked only where that costs no device sync and no graph break (a plain
    CPU tensor outside tracing), no graph of the gradient being built, and this backward
    freeing the graph.  A kept graph would let autograd take a saved tensor over as ``.grad``
    and a later backward add to it."""
    kept = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", lambda: True)
    # .item(), not a comparison op: in a backward that op costs 20 us, the whole kernel at
    # classifier shapes.
    return (grad_loss.dim() == 0 and grad_loss.is_cpu and plain(grad_loss)
            and not torch.is_grad_enabled() and not kept() and grad_loss.item() == 1)


def is_eager(ctx) -> bool:
    """Whether ``ctx`` is the context of a call on the eager path."""
    return getattr(ctx, "eager", False)


def with_eager_path(name: str, op: Callable, implementation: Callable,
                    setup_context: Callable, backward: Callable) -> Callable:
    """A callable with ``op``'s signature: ``op`` itself when traced, else ``implementation``
    under an autograd Function named ``name`` (its grad_fn is ``{name}Backward``) with
    ``setup_context`` and ``backward``, the formula registered on ``op``, or ``implementation``
    alone when no tensor argument requires grad or grad mode is off."""

    def forward(ctx, *args):
        output = implementation(*args)
        setup_context(ctx, args, output)
        ctx.eager = True
        return output

    # The old-style forward(ctx, ...): the setup_context style binds every call's arguments
    # with inspect.signature, 0.1 ms.  Built with type() so that the backward node is named.
    eager = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward)})

    def call(*args):
        if not plain(*args):
            return op(*args)
        if torch.is_grad_enabled():
            for value in args:
                if isinstance(value, torch.Tensor) and value.requires_grad:
                    return eager.apply(*args)
        # Nothing to differentiate (no_grad, inference, evaluation): a Function would build no
        # node, and its call costs half of the forward at classifier shapes.
        return implementation(*args)

    return call
