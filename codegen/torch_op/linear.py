"""Fused linear + cross-entropy: ``cross_entropy(input @ weight.T + bias, target)`` computed in
chunks of rows, so that the full N x V logits never exist.

Per chunk: the logits by a torch matmul, the generated cross-entropy kernel in place on them,
``grad_input[chunk] = g @ weight`` and ``grad_weight += g^T input[chunk]`` (accumulated in
``accum_dtype``, float32 for bfloat16/float16).  For "mean" and "sum" the gradients are made in
the forward pass, with the final scale 1/denominator computed once up front, and scaled by
the scalar ``grad_output`` in the backward.  For "none" the forward makes only the losses and
the backward recomputes each chunk with the per-row ``grad_output``, so it is never wrong.
"""

from __future__ import annotations

import torch
from gradsmith.codegen.arguments import bad_target_message
from gradsmith.codegen.torch_op.checks import check_class_weight, check_options, check_target
from gradsmith.codegen.torch_op.eager import may_hand_back
from gradsmith.codegen.torch_op.kernel import fused_cross_entropy
from gradsmith.codegen.torch_op.spec_functions import evaluate, spec_for

LOW_PRECISION = (torch.bfloat16, torch.float16)
ACCUM_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Chunks of about 16M logits (64 MiB in float32), at least 256 rows (grad_weight is updated once
# per chunk, so thin chunks make that update memory-bound) and at most a quarter of the rows.
CHUNK_ELEMENTS = 1 << 24
MIN_CHUNK_ROWS = 256
MIN_CHUNKS = 4


def default_chunk_size(rows: int, classes: int) -> int:
    """Rows per chunk when ``chunk_size`` is None."""
    wanted = max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(classes, 1))
    return max(1, min(wanted, -(-rows // MIN_CHUNKS)))


def _kernel_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype the kernel runs in: the CPU kernels take float32 and float64 only."""
    if tensor.device.type == "cpu" and tensor.dtype in LOW_PRECISION:
        return torch.float32
    return tensor.dtype


def mean_denominator(target: torch.Tensor, kind: str, ce_weight: torch.Tensor | None,
                     ignore_index: int, dtype: torch.dtype) -> torch.Tensor:
    """The "mean" denominator over all rows: the sum of the spec's row weights of counted rows."""
    spec = spec_for(kind, ce_weight is not None, False)
    if kind == "probs":
        rows = evaluate(spec.row_weight, {}) * torch.ones(target.shape[0], dtype=dtype, device=target.device)
        return rows.sum()
    counted = target != ignore_index
    if ce_weight is None:
        target_weight = torch.ones(target.shape, dtype=dtype, device=target.device)
    else:
        classes = ce_weight.shape[0]
        target_weight = ce_weight.to(dtype)[target.clamp(0, classes - 1)]
    rows = evaluate(spec.row_weight, {"target_weight": target_weight})
    return torch.where(counted, rows, torch.zeros((), dtype=dtype, device=target.device)).sum()


def mean_scale(denominator: torch.Tensor, kind: str, weighted: bool) -> torch.Tensor:
    """The gradient scale of "mean" at grad_output 1: the per-chunk (or per-shard) factor that
    makes sums over parts of the rows the mean over all of them."""
    spec = spec_for(kind, weighted, False)
    one = torch.ones((), dtype=denominator.dtype, device=denominator.device)
    scale = evaluate(spec.scale_mean, {"grad_output": one, "denominator": denominator})
    # A mean over nothing is NaN with NaN gradients on counted rows, as in PyTorch.
    return torch.where(denominator > 0, scale, torch.full_like(scale, torch.nan))


def chunked_linear_cross_entropy(
    input: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
    bias: torch.Tensor | None, ce_weight: torch.Tensor | None, *, ignore_index: int,
    reduction: str, label_smoothing: float, lse_square_scale: float, softcap: float | None,
    chunk_size: int, accum_dtype: torch.dtype, row_grad_output: torch.Tensor | None,
    need_input: bool, need_weight: bool, need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(loss, grad_input, grad_weight, grad_bias) of the whole call, chunk by chunk.

    ``row_grad_output`` (N,) turns it into the backward of reduction="none"; otherwise the
    gradients are those of the returned loss (grad_output 1).
    """
    rows, hidden = input.shape
    classes = weight.shape[0]
    kind = "index" if target.dim() == 1 else "probs"
    kernel_dtype = _kernel_dtype(input)
    class_weight = None if ce_weight is None else ce_weight.to(kernel_dtype)
    want_grads = need_input or need_weight or need_bias
    if kind == "index":
        bad = (target != ignore_index) & ((target < 0) | (target >= classes))
        if bool(bad.any()):  # checked here for all rows, so that the message names the row
            row = int(bad.nonzero()[0, 0])
            raise ValueError(bad_target_message(row, int(target[row]), classes, ignore_index))
    per_row = reduction == "none" or row_grad_output is not None
    scale = None
    if reduction == "mean" and row_grad_output is None:
        denominator = mean_denominator(target, kind, ce_weight, ignore_index, kernel_dtype)
        scale = mean_scale(denominator, kind, ce_weight is not None)
        if lse_square_scale and kind == "index" and ce_weight is not None:
            # The chunks' sums carry the z-loss scale a whole-batch "mean" gives its rows.
            counted_rows = (target != ignore_index).sum().to(kernel_dtype)
            spec = spec_for(kind, True, False)
            lse_square_scale = float(evaluate(spec.mean_lse_square_scale, {
                "lse_square_scale": lse_square_scale, "denominator": denominator,
                "counted_rows": counted_rows}))
    device = input.device
    grad_input = torch.empty_like(input) if need_input else None
    grad_weight = torch.zeros(classes, hidden, dtype=accum_dtype, device=device) if need_weight else None
    grad_bias = torch.zeros(classes, dtype=accum_dtype, device=device) if need_bias else None
    losses = torch.empty(rows, dtype=kernel_dtype, device=device) if reduction == "none" else None
    total = torch.zeros((), dtype=kernel_dtype, device=device)
    buffer = torch.empty(min(chunk_size, rows), classes, dtype=input.dtype, device=device)
    for start in range(0, rows, chunk_size):
        stop = min(start + chunk_size, rows)
        chunk_input = input[start:stop]
        logits = buffer[: stop - start]
        if bias is None:
            torch.mm(chunk_input, weight.t(), out=logits)
        else:
            torch.addmm(bias, chunk_input, weight.t(), out=logits)
        logits = logits if logits.dtype == kernel_dtype else logits.to(kernel_dtype)
        if row_grad_output is not None:
            chunk_grad_output = row_grad_output[start:stop]
        else:
            chunk_grad_output = scale
        loss, dlogits, _ = fused_cross_entropy(
            logits, target[start:stop], weight=class_weight, ignore_index=ignore_index,
            reduction="none" if per_row else "sum", label_smoothing=label_smoothing,
            lse_square_scale=lse_square_scale, softcap=softcap,
            grad_output=chunk_grad_output, dlogits=logits,
        )
        if row_grad_output is None:
            if losses is not None:
                losses[start:stop] = loss
            else:
                total += loss
        if not want_grads:
            continue
        if need_input:
            torch.mm(dlogits.to(input.dtype), weight, out=grad_input[start:stop])
        if need_weight or need_bias:
            accumulated = dlogits.to(accum_dtype)
            if need_weight:
                grad_weight.addmm_(accumulated.t(), chunk_input.to(accum_dtype))
            if need_bias:
                grad_bias += accumulated.sum(0)
    if losses is not None:
        loss_out = losses
    elif reduction == "mean":
        loss_out = evaluate(spec_for(kind, ce_weight is not None, False).loss_mean,
                            {"loss_total": total, "denominator": denominator})
    else:
        loss_out = total
    if need_weight:
        grad_weight = grad_weight.to(weight.dtype)
    if need_bias:
        grad_bias = grad_bias.to(bias.dtype)
    return loss_out, grad_input, grad_weight, grad_bias


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


@torch.library.custom_op("gradsmith::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy_op(
    input: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
    bias: torch.Tensor | None, ce_weight: torch.Tensor | None, ignore_index: int,
    reduction: str, label_smoothing: float, lse_square_scale: float, softcap: float | None,
    chunk_size: int, accum_dtype: str, need_input: bool, need_weight: bool, need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss, and for "mean"/"sum" the gradients of the loss (empty when not wanted)."""
    grads = reduction != "none"
    loss, grad_input, grad_weight, grad_bias = chunked_linear_cross_entropy(
        input, weight, target, bias, ce_weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, lse_square_scale=lse_square_scale, softcap=softcap,
        chunk_size=chunk_size, accum_dtype=ACCUM_DTYPES[accum_dtype], row_grad_output=None,
        need_input=grads and need_input, need_weight=grads and need_weight,
        need_bias=grads and need_bias,
    )
    return (loss, _empty(input) if grad_input is None else grad_input,
            _empty(weight) if grad_weight is None else grad_weight,
            _empty(weight) if grad_bias is None else grad_bias)


@_linear_cross_entropy_op.register_fake
def _(input, weight, target, bias, ce_weight, ignore_index, reduction, label_smoothing,
      lse_square_scale, softcap, chunk_size, accum_dtype, need_input, need_weight, need_bias):
    grads = reduction != "none"
    loss_dtype = _kernel_dtype(input)
    loss = input.new_empty((input.shape[0],) if not grads else (), dtype=loss_dtype)
    return (loss, input.new_empty(input.shape if grads and need_input else (0,)),
            weight.new_empty(weight.shape if grads and need_weight else (0,)),
            weight.new_empty((weight.shape[0],) if grads and need_bias else (0,)))


@torch.library.custom_op("gradsmith::linear_cross_entropy_backward", mutates_args=())
def _linear_cross_entropy_backward_op(
    grad_output: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
    bias: torch.Tensor | None, ce_weight: torch.Tensor | None, ignore_index: int,
    label_smoothing: float, lse_square_scale: float, softcap: float | None, chunk_size: int,
    accum_dtype: str, need_input: bool, need_weight: bool, need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of reduction="none" for a per-row ``grad_output``, recomputed by chunk."""
    _, grad_input, grad_weight, grad_bias = chunked_linear_cross_entropy(
        input, weight, target, bias, ce_weight, ignore_index=ignore_index, reduction="none",
        label_smoothing=label_smoothing, lse_square_scale=lse_square_scale, softcap=softcap,
        chunk_size=chunk_size, accum_dtype=ACCUM_DTYPES[accum_dtype],
        row_grad_output=grad_output.to(_kernel_dtype(input)).contiguous(),
        need_input=need_input, need_weight=need_weight, need_bias=need_bias,
    )
    return (_empty(input) if grad_input is None else grad_input,
            _empty(weight) if grad_weight is None else grad_weight,
            _empty(weight) if grad_bias is None else grad_bias)


@_linear_cross_entropy_backward_op.register_fake
def _(grad_output, input, weight, target, bias, ce_weight, ignore_index, label_smoothing,
      lse_square_scale, softcap, chunk_size, accum_dtype, need_input, need_weight, need_bias):
    return (input.new_empty(input.shape if need_input else (0,)),
            weight.new_empty(weight.shape if need_weight else (0,)),
            weight.new_empty((weight.shape[0],) if need_bias else (0,)))


_TENSORS = ("input", "weight", "target", "bias", "ce_weight")
_OPTIONS = ("ignore_index", "reduction", "label_smoothing", "lse_square_scale", "softcap",
            "chunk_size", "accum_dtype", "need_input", "need_weight", "need_bias")


def _setup_context(ctx, inputs, output) -> None:
    named = dict(zip(_TENSORS + _OPTIONS, inputs, strict=True))
    # Only the loss is differentiable; unmaterialised gradients of the other outputs spare
    # autograd a zero tensor the size of weight.
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)
    ctx.options = {name: named[name] for name in _OPTIONS}
    if named["reduction"] == "none":
        ctx.save_for_backward(*(named[name] for name in _TENSORS))
    else:
        ctx.save_for_backward(*output[1:])


def _scaled(grads: tuple[torch.Tensor, ...], grad_loss: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The saved gradients times the scalar grad_output, or the saved gradients themselves
    where ``may_hand_back``: autograd then takes them over as ``.grad`` with no second copy of
    grad_weight."""
    if may_hand_back(grad_loss):
        return grads
    return tuple(grad * grad_loss.to(grad.dtype) for grad in grads)


def _backward(ctx, grad_loss, *unused):
    options = ctx.options
    if grad_loss is None:
        return (None,) * (len(_TENSORS) + len(_OPTIONS))
    if options["reduction"] == "none":
        input, weight, target, bias, ce_weight = ctx.saved_tensors
        grads = _linear_cross_entropy_backward_op(
            grad_loss, input, weight, target, bias, ce_weight,
            *(options[name] for name in _OPTIONS if name != "reduction"),
        )
    else:
        grads = _scaled(ctx.saved_tensors, grad_loss)
    wanted = (options["need_input"], options["need_weight"], options["need_bias"])
    grad_input, grad_weight, grad_bias = (g if want else None for g, want in zip(grads, wanted, strict=True))
    return (grad_input, grad_weight, None, grad_bias, None) + (None,) * len(_OPTIONS)


_linear_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(
    input: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ce_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    accum_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``cross_entropy(input @ weight.T + bias, target, weight=ce_weight, ...)`` without the
    full logits: ``input`` (..., H), ``weight`` (V, H) as in ``nn.Linear``, ``target`` (...)
    class indices or (..., V) probabilities; the loss is () or, for "none", ``target``'s shape.

    ``chunk_size`` rows are processed at a time (default: :func:`default_chunk_size`);
    ``accum_dtype`` is the dtype ``grad_weight`` and ``grad_bias`` are summed in (float32 for
    bfloat16/float16 weights, else the weight's dtype).
    """
    ignore_index, reduction, label_smoothing, lse_square_scale, softcap = check_options(
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
        lse_square_scale=lse_square_scale, softcap=softcap)
    for name, tensor in (("input", input), ("weight", weight)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating torch.Tensor, got "
                            f"{getattr(tensor, 'dtype', type(tensor).__name__)}")
    if input.dim() < 1 or weight.dim() != 2 or weight.shape[1] != input.shape[-1]:
        raise ValueError(f"weight must have shape (V, {input.shape[-1] if input.dim() else 'H'}) "
                         f"for input of shape (..., H), got input {tuple(input.shape)} and "
                         f"weight {tuple(weight.shape)}")
    if weight.dtype != input.dtype or weight.device != input.device:
        raise TypeError(f"weight must match input's dtype and device ({input.dtype}, "
                        f"{input.device}), got {weight.dtype} on {weight.device}")
    classes, hidden = weight.shape
    if classes < 1:
        raise ValueError("weight must have at least one row (V >= 1)")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (classes,)
                             or bias.dtype != input.dtype):
        raise ValueError(f"bias must be a {input.dtype} tensor of shape ({classes},), got "
                         f"{getattr(bias, 'dtype', None)} {tuple(getattr(bias, 'shape', ()))}")
    check_class_weight("ce_weight", ce_weight, classes, input)
    batch = tuple(input.shape[:-1])
    kind = check_target(target, batch, classes, ignore_index)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if accum_dtype is None:
        accum_dtype = torch.float32 if weight.dtype in LOW_PRECISION else weight.dtype
    if accum_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"accum_dtype must be torch.float32, torch.float64 or None, got {accum_dtype}")
    rows = input.numel() // hidden
    flat_input = input.reshape(rows, hidden).contiguous()
    flat_target = target.reshape(rows) if kind == "index" else target.reshape(rows, classes)
    if kind == "index":
        flat_target = flat_target.to(torch.int64)
    else:
        flat_target = flat_target.to(_kernel_dtype(input)).contiguous()
    grad_on = torch.is_grad_enabled()
    loss, *_ = _linear_cross_entropy_op(
        flat_input, weight, flat_target, bias, ce_weight, ignore_index, reduction,
        label_smoothing, lse_square_scale, softcap,
        chunk_size or default_chunk_size(rows, classes), str(accum_dtype).removeprefix("torch."),
        grad_on and input.requires_grad, grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    return loss.reshape(batch) if reduction == "none" else loss


class LinearCrossEntropyLoss(torch.nn.Module):
    """An output head and its loss in one: ``nn.Linear(in_features, num_classes, bias)``
    followed by cross-entropy, computed by :func:`linear_cross_entropy` (PyTorch's
    ``nn.LinearCrossEntropyLoss`` layout: ``self.linear``, class weights as buffer ``weight``).
    """

    def __init__(self, in_features: int, num_classes: int, *, bias: bool = False, device=None,
                 dtype=None, weight: torch.Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0,
                 lse_square_scale: float = 0.0, softcap: float | None = None,
                 chunk_size: int | None = None, accum_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_options(ignore_index=ignore_index, reduction=reduction,
                      label_smoothing=label_smoothing, lse_square_scale=lse_square_scale,
                      softcap=softcap)
        self.linear = torch.nn.Linear(in_features, num_classes, bias=bias, device=device,
                                      dtype=dtype)
        self.register_buffer("weight", weight)
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing, self.lse_square_scale = label_smoothing, lse_square_scale
        self.softcap, self.chunk_size, self.accum_dtype = softcap, chunk_size, accum_dtype

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(
            input, self.linear.weight, target, self.linear.bias, ce_weight=self.weight,
            ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, lse_square_scale=self.lse_square_scale,
            softcap=self.softcap, chunk_size=self.chunk_size, accum_dtype=self.accum_dtype)
