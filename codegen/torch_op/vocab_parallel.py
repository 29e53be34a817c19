"""Cross-entropy with the vocabulary sharded across the ranks of a torch.distributed group.

Each rank holds a contiguous shard ``logits[:, offset:offset + V_r]``; targets and class weights
are global.  A forward call makes three collectives: one all-gather of a few integers per rank
(shapes, options and a target checksum, so that a rank that disagrees gets a ValueError instead
of a hang), one all-reduce MAX of the row maxima and one all-reduce SUM of the packed row
statistics [sum_exp, weight_sum, shifted_sum, target_logit] at that maximum.  The loss and
each rank's gradient then follow from the kernel spec's expressions, as
:mod:`gradsmith.derive.vocab_parallel` proves; the backward is local.
"""

from __future__ import annotations

import struct

import torch
import torch.distributed as dist
from gradsmith.codegen.arguments import bad_target_message
from gradsmith.codegen.torch_op.checks import check_class_weight, check_options
from gradsmith.codegen.torch_op.linear import LOW_PRECISION, mean_denominator, mean_scale
from gradsmith.codegen.torch_op.spec_functions import evaluate, row_values, spec_for
from gradsmith.derive.kernel_spec import linear_sums_unused_without_smoothing

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_HEADER = ("rows", "shard classes", "reduction", "ignore_index", "label_smoothing",
           "lse_square_scale", "softcap", "class weights", "target checksum")


def _bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


def _agree(local_logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
           options: dict, group) -> tuple[int, int]:
    """(offset of this rank's shard, global number of classes), after checking that every rank
    of ``group`` has the same rows, options and targets (one all-gather)."""
    rows, shard = local_logits.shape
    positions = torch.arange(1, rows + 1, dtype=torch.int64)
    checksum = int((target.to(torch.int64) * positions).sum()) if rows else 0
    header = torch.tensor([
        rows, shard, _REDUCTIONS[options["reduction"]], options["ignore_index"],
        _bits(options["label_smoothing"]), _bits(options["lse_square_scale"]),
        _bits(-1.0 if options["softcap"] is None else options["softcap"]),
        -1 if weight is None else int(weight.shape[0]), checksum,
    ], dtype=torch.int64)
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(header) for _ in range(world)]
    dist.all_gather(gathered, header, group=group)
    table = torch.stack(gathered)
    for column, name in enumerate(_HEADER):
        if name != "shard classes" and bool((table[:, column] != table[0, column]).any()):
            values = table[:, column].tolist()
            raise ValueError(f"vocab_parallel_cross_entropy: the ranks disagree on {name} "
                             f"(per rank: {values}); every rank must pass the same rows, "
                             "target, weight and options")
    shards = table[:, 1].tolist()
    if min(shards) < 1:
        raise ValueError(f"vocab_parallel_cross_entropy: every rank needs at least one class, "
                         f"got shard sizes {shards}")
    rank = dist.get_rank(group)
    return sum(shards[:rank]), sum(shards)


def _statistics(spec, shifted: torch.Tensor, local_weight: torch.Tensor | None,
                raw_target_logit: torch.Tensor, linear: bool) -> torch.Tensor:
    """This rank's [sum_exp, weight_sum, shifted_sum, target_logit] per row, at the pivot.
    Without ``linear`` (no label smoothing, where nothing reads them) the linear sums are 0:
    0 times a -inf logit's shifted term would make the loss NaN where PyTorch's is finite."""
    values = {"shifted": shifted}
    if local_weight is not None:
        values["weight"] = local_weight
    exp_sum = evaluate(spec.exp_term, values).sum(1)
    if not linear:
        zero = torch.zeros_like(exp_sum)
        return torch.stack([exp_sum, zero, zero, raw_target_logit], dim=1)
    coefficient = torch.broadcast_to(evaluate(spec.linear_coefficient, values)
                                     * torch.ones_like(shifted), shifted.shape)
    return torch.stack([
        exp_sum, coefficient.sum(1), (coefficient * shifted).sum(1), raw_target_logit,
    ], dim=1)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local_logits, target, weight, group, options):
        offset, classes = _agree(local_logits, target, weight, options, group)
        if weight is not None and weight.shape[0] != classes:
            raise ValueError(f"weight must have shape ({classes},) (the whole vocabulary), got "
                             f"{tuple(weight.shape)}")
        ignore_index, reduction = options["ignore_index"], options["reduction"]
        counted = target != ignore_index
        bad = counted & ((target < 0) | (target >= classes))
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(bad_target_message(row, int(target[row]), classes, ignore_index))
        spec = spec_for("index", weight is not None, options["softcap"] is not None)
        # The statistics are summed in float32 at least, whatever the logits' storage.
        dtype = torch.float32 if local_logits.dtype in LOW_PRECISION else local_logits.dtype
        logits = local_logits.detach().to(dtype)
        softcap = {} if options["softcap"] is None else {"softcap": options["softcap"]}
        transformed = evaluate(spec.transform, {"logit": logits, **softcap})
        row_max = transformed.max(dim=1).values
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        shifted = transformed - row_max[:, None]
        local = (target - offset).clamp(0, logits.shape[1] - 1)
        owned = counted & (target >= offset) & (target < offset + logits.shape[1])
        raw_target = logits.gather(1, local[:, None])[:, 0]
        local_weight = None if weight is None else weight.to(dtype)[offset:offset + logits.shape[1]]
        linear = options["label_smoothing"] != 0 or not linear_sums_unused_without_smoothing(spec)
        packed = _statistics(spec, shifted, local_weight,
                             torch.where(owned, raw_target, torch.zeros_like(raw_target)), linear)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        if weight is None:
            target_weight = torch.ones_like(row_max)
        else:
            target_weight = weight.to(dtype)[target.clamp(0, classes - 1)]
        denominator, lse_square_scale = None, options["lse_square_scale"]
        if reduction == "mean":
            denominator = mean_denominator(target, "index", weight, ignore_index, dtype)
            lse_square_scale = evaluate(spec.mean_lse_square_scale, {
                "lse_square_scale": lse_square_scale, "denominator": denominator,
                "counted_rows": counted.sum().to(dtype)})
        state = {
            "row_max": row_max, "sum_exp": packed[:, 0], "weight_sum": packed[:, 1],
            "shifted_sum": packed[:, 2], "target_logit": packed[:, 3],
            "target_weight": target_weight, "num_classes": classes,
            "label_smoothing": options["label_smoothing"],
            "lse_square_scale": lse_square_scale,
            "grad_scale": torch.ones_like(row_max), **softcap,
        }
        losses = torch.where(counted, row_values(spec, state)["loss"], torch.zeros_like(row_max))
        if reduction == "mean":
            loss = evaluate(spec.loss_mean, {"loss_total": losses.sum(), "denominator": denominator})
        else:
            loss = losses if reduction == "none" else losses.sum()
        ctx.save_for_backward(logits, shifted, local_weight, counted, owned, local)
        ctx.state, ctx.spec, ctx.denominator = state, spec, denominator
        ctx.reduction, ctx.input_dtype = reduction, local_logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, shifted, local_weight, counted, owned, local = ctx.saved_tensors
        spec, dtype = ctx.spec, logits.dtype
        grad_loss = grad_loss.to(dtype)
        if ctx.reduction == "mean":
            scale = grad_loss * mean_scale(ctx.denominator, "index", local_weight is not None)
        else:
            scale = grad_loss
        zero = torch.zeros((), dtype=dtype, device=logits.device)
        grad_scale = torch.where(counted, torch.broadcast_to(scale, counted.shape), zero)
        values = row_values(spec, {**ctx.state, "grad_scale": grad_scale})
        columns = {name: values[name][:, None] for name in
                   ("log_sum_exp", "coef_prob", "coef_smooth", "coef_rest", "target_shifted")}
        element = {"logit": logits, "shifted": shifted, **columns,
                   **{k: v for k, v in values.items() if k == "softcap"}}
        if local_weight is not None:
            element["weight"] = local_weight
        grad = evaluate(spec.dlogit, element) * torch.ones_like(logits)
        at_target = {**values, "target_logit": logits.gather(1, local[:, None])[:, 0],
                     "target_weight": values["target_weight"]}
        target_grad = evaluate(spec.dlogit_target, at_target)
        rows = owned.nonzero()[:, 0]
        grad[rows, local[rows]] = torch.broadcast_to(target_grad, owned.shape)[rows]
        return grad.to(ctx.input_dtype), None, None, None, None


def vocab_parallel_cross_entropy(
    local_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """``cross_entropy`` of the logits whose class axis is split over the ranks of ``group``
    (default: the world), every rank holding a contiguous shard ``(N, V_r)`` in rank order.

    ``target`` (N,) holds global class indices and ``weight`` (V,) global class weights, the
    same on every rank; every rank gets the same loss, and the gradient of its own shard.
    Label smoothing is PyTorch's: eps / V over the whole vocabulary.
    """
    ignore_index, reduction, label_smoothing, lse_square_scale, softcap = check_options(
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
        lse_square_scale=lse_square_scale, softcap=softcap)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("vocab_parallel_cross_entropy needs an initialised torch.distributed "
                           "process group (torch.distributed.init_process_group)")
    if not isinstance(local_logits, torch.Tensor) or not local_logits.is_floating_point():
        raise TypeError("local_logits must be a floating torch.Tensor")
    if local_logits.dim() != 2:
        raise ValueError(f"local_logits must have shape (N, V_r), got {tuple(local_logits.shape)}")
    if (not isinstance(target, torch.Tensor) or target.is_floating_point()
            or tuple(target.shape) != (local_logits.shape[0],)):
        raise ValueError(f"target must hold integer class indices of shape "
                         f"({local_logits.shape[0]},), got {getattr(target, 'dtype', None)} of "
                         f"shape {tuple(getattr(target, 'shape', ()))}")
    if weight is not None:
        check_class_weight("weight", weight, int(weight.shape[0]) if weight.dim() == 1 else -1,
                           local_logits)
    options = {"ignore_index": ignore_index, "reduction": reduction,
               "label_smoothing": label_smoothing, "lse_square_scale": lse_square_scale,
               "softcap": softcap}
    return _VocabParallelCrossEntropy.apply(local_logits, target.to(torch.int64), weight, group,
                                            options)


class _SumGradientOverRanks(torch.autograd.Function):
    """Identity forward; the backward all-reduces the gradient (the input of a head whose
    vocabulary is sharded feeds every rank, so its gradient is the sum of theirs)."""

    @staticmethod
    def forward(ctx, input, group):
        ctx.group = group
        return input.view_as(input)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def vocab_parallel_linear_cross_entropy(
    input: torch.Tensor,
    local_weight: torch.Tensor,
    target: torch.Tensor,
    local_bias: torch.Tensor | None = None,
    *,
    group: dist.ProcessGroup | None = None,
    **options,
) -> torch.Tensor:
    """:func:`vocab_parallel_cross_entropy` of ``input @ local_weight.T + local_bias``: the output
    head sharded by vocabulary (Megatron's layout), ``input`` (N, H) the same on every rank and
    ``local_weight`` (V_r, H) this rank's rows.  ``input``'s gradient is summed over the ranks
    (one more all-reduce, in the backward); the weight's stays local.
    """
    if not isinstance(input, torch.Tensor) or input.dim() != 2:
        raise ValueError(f"input must have shape (N, H), got {tuple(getattr(input, 'shape', ()))}")
    if (not isinstance(local_weight, torch.Tensor) or local_weight.dim() != 2
            or local_weight.shape[1] != input.shape[1]):
        raise ValueError(f"local_weight must have shape (V_r, {input.shape[1]}), got "
                         f"{tuple(getattr(local_weight, 'shape', ()))}")
    shared = _SumGradientOverRanks.apply(input, group) if input.requires_grad else input
    local_logits = torch.nn.functional.linear(shared, local_weight, local_bias)
    return vocab_parallel_cross_entropy(local_logits, target, group=group, **options)
