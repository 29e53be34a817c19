"""High-precision references for softmax cross-entropy with every option of the callable.

``reference_cross_entropy`` evaluates PyTorch's definition of ``F.cross_entropy`` (plus z-loss
and softcapping) in mpmath at 40 significant digits and differentiates it by forward-mode
automatic differentiation on that same definition, so neither the loss nor the gradient uses
anything from ``derive/``.  ``torch_reference`` computes the same quantities with PyTorch and
autograd (used to validate the mpmath reference), and ``finite_difference_grad`` gives central
differences of any loss function.

Where gradsmith differs from PyTorch the reference follows gradsmith: a row holding NaN or
+-Inf has NaN loss and gradient (PyTorch gives finite values for -Inf logits away from the
target), and an ignored row has zero loss and gradient whatever its logits (PyTorch gives a NaN
gradient in an ignored row holding NaN).  ``ignore_index`` is not used with probability targets
(PyTorch and gradsmith refuse it unless it is -100).
"""

from __future__ import annotations

from collections.abc import Callable

import mpmath
import numpy as np

DIGITS = 40
REDUCTIONS = ("none", "mean", "sum")


class _Dual:
    """A number carrying its gradient with respect to the logits of one row (forward mode)."""

    __slots__ = ("grad", "value")

    def __init__(self, value, grad):
        self.value = value
        self.grad = grad  # numpy object array of mpf, one entry per class

    def __add__(self, other):
        if isinstance(other, _Dual):
            return _Dual(self.value + other.value, self.grad + other.grad)
        return _Dual(self.value + other, self.grad)

    __radd__ = __add__

    def __neg__(self):
        return _Dual(-self.value, -self.grad)

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        if isinstance(other, _Dual):
            return _Dual(self.value * other.value, self.grad * other.value + other.grad * self.value)
        return _Dual(self.value * other, self.grad * other)

    __rmul__ = __mul__


def _exp(x: _Dual) -> _Dual:
    value = mpmath.exp(x.value)
    return _Dual(value, x.grad * value)


def _log(x: _Dual) -> _Dual:
    return _Dual(mpmath.log(x.value), x.grad * (1 / x.value))


def _tanh(x: _Dual) -> _Dual:
    value = mpmath.tanh(x.value)
    return _Dual(value, x.grad * (1 - value * value))


def _dual_sum(terms: list[_Dual], classes: int) -> _Dual:
    total = _Dual(mpmath.mpf(0), np.array([mpmath.mpf(0)] * classes, dtype=object))
    for term in terms:
        total = total + term
    return total


def _row(
    logits: np.ndarray,
    target: int | np.ndarray,
    weight: np.ndarray,
    label_smoothing,
    lse_square_scale,
    softcap,
) -> tuple[mpmath.mpf, np.ndarray, mpmath.mpf]:
    """Loss of one row, its gradient with respect to the row's logits, and the row's lse."""
    classes = len(logits)
    zero = mpmath.mpf(0)
    inputs = []
    for j, value in enumerate(logits):
        seed = np.array([zero] * classes, dtype=object)
        seed[j] = mpmath.mpf(1)
        inputs.append(_Dual(mpmath.mpf(float(value)), seed))
    if softcap is not None:
        cap = mpmath.mpf(softcap)
        inputs = [cap * _tanh(z * (1 / cap)) for z in inputs]
    # The maximum enters as a constant: the definition is exactly invariant under the shift.
    shift = max(u.value for u in inputs)
    shifted = [u - shift for u in inputs]
    log_norm = _log(_dual_sum([_exp(v) for v in shifted], classes))
    log_probs = [v - log_norm for v in shifted]
    lse = shift + log_norm
    eps = mpmath.mpf(label_smoothing)
    w = [mpmath.mpf(float(x)) for x in weight]
    if isinstance(target, np.ndarray):
        smoothed = [(1 - eps) * mpmath.mpf(float(y)) + eps / classes for y in target]
        loss = -_dual_sum([wj * yj * lp for wj, yj, lp in zip(w, smoothed, log_probs)], classes)
    else:
        nll = -(w[target] * log_probs[target])
        smooth = -_dual_sum([wj * lp for wj, lp in zip(w, log_probs)], classes)
        loss = (1 - eps) * nll + (eps / classes) * smooth
    z_loss = mpmath.mpf(lse_square_scale) * (lse * lse)
    return (loss + z_loss).value, (loss + z_loss).grad, lse.value, z_loss


def _as_index_target(target: np.ndarray, n: int, classes: int, ignore_index: int) -> np.ndarray:
    if target.shape != (n,):
        raise ValueError(f"target: expected shape ({n},), got {target.shape}")
    bad = (target != ignore_index) & ((target < 0) | (target >= classes))
    if bad.any():
        raise ValueError(f"target: row {int(np.argmax(bad))} is outside [0, {classes})")
    return target.astype(np.int64)


def reference_cross_entropy(
    logits,
    target,
    *,
    weight=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    grad_output=None,
    return_lse: bool = False,
    digits: int = DIGITS,
):
    """``(loss, dlogits[, lse])`` of ``gradsmith.load``'s callable, as float64 arrays, at ``digits``.

    Inputs are taken exactly (a float32 array is read as the float64 values it holds).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape (N, C), got {logits.shape}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    n, classes = logits.shape
    target = np.asarray(target)
    probs = np.issubdtype(target.dtype, np.floating)
    if probs:
        if target.shape != (n, classes):
            raise ValueError(f"target: expected shape ({n}, {classes}), got {target.shape}")
        target = target.astype(np.float64)
    else:
        target = _as_index_target(target, n, classes, ignore_index)
    weight = np.ones(classes) if weight is None else np.asarray(weight, dtype=np.float64)
    if weight.shape != (classes,):
        raise ValueError(f"weight: expected shape ({classes},), got {weight.shape}")
    if reduction == "none":
        scales = np.ones(n) if grad_output is None else np.broadcast_to(grad_output, (n,))
        scales = [mpmath.mpf(float(g)) for g in scales]
    else:
        scales = [mpmath.mpf(1.0 if grad_output is None else float(grad_output))] * n

    with mpmath.workdps(digits):
        row_loss = [mpmath.mpf(0)] * n
        row_grad = np.zeros((n, classes), dtype=object)
        row_grad[:] = mpmath.mpf(0)
        # The z-term of each row: under "mean" it is divided by the counted rows, not the weights.
        row_z_loss = [mpmath.mpf(0)] * n
        row_z_grad = np.zeros((n, classes), dtype=object)
        row_z_grad[:] = mpmath.mpf(0)
        lse = np.full(n, np.nan)
        kept = np.ones(n, dtype=bool) if probs else target != ignore_index
        finite = np.isfinite(logits).all(axis=1)
        denominator = mpmath.mpf(0)
        for i in range(n):
            if kept[i]:
                denominator += 1 if probs else mpmath.mpf(float(weight[target[i]]))
            if not finite[i]:
                continue
            loss_i, grad_i, lse_i, z_i = _row(
                logits[i],
                target[i] if probs else int(target[i]) if kept[i] else 0,
                weight,
                label_smoothing,
                lse_square_scale,
                softcap,
            )
            lse[i] = float(lse_i)
            if kept[i]:
                row_loss[i], row_grad[i] = loss_i, grad_i
                row_z_loss[i], row_z_grad[i] = z_i.value, z_i.grad

        dlogits = np.zeros((n, classes))
        if reduction == "mean":
            factor = scales[0] / denominator if denominator != 0 else mpmath.nan
            counted = int(kept.sum())
            z_factor = scales[0] / counted - factor if denominator != 0 else mpmath.nan
        for i in range(n):
            if not kept[i]:
                continue
            if not finite[i]:
                dlogits[i] = np.nan
                continue
            if reduction == "mean":
                dlogits[i] = [float(factor * g + z_factor * zg)
                              for g, zg in zip(row_grad[i], row_z_grad[i])]
            else:
                dlogits[i] = [float(scales[i] * g) for g in row_grad[i]]
        per_row = np.array([float(x) for x in row_loss], dtype=np.float64)
        per_row[kept & ~finite] = np.nan
        if reduction == "none":
            loss = per_row
        elif reduction == "sum":
            loss = np.array(float(mpmath.fsum(row_loss)) if finite[kept].all() else np.nan)
        elif denominator == 0 or not finite[kept].all():
            loss = np.array(np.nan)
        else:
            z_total = mpmath.fsum(row_z_loss)
            loss = np.array(float((mpmath.fsum(row_loss) - z_total) / denominator
                                  + z_total / int(kept.sum())))
    if return_lse:
        return loss, dlogits, lse
    return loss, dlogits


def finite_difference_grad(
    f_loss: Callable[[np.ndarray], float], logits, h: float | None = None
) -> np.ndarray:
    """Central differences in float64 of a scalar function of the logits.

    ``h`` defaults to 1e-6 times the magnitude of each element (at least 1e-6), which balances
    truncation (h^2) and rounding (1e-16 / h) errors for smooth losses of moderate curvature.
    """
    logits = np.array(logits, dtype=np.float64)
    grad = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        step = h if h is not None else 1e-6 * max(1.0, abs(logits[index]))
        original = logits[index]
        logits[index] = original + step
        up = float(f_loss(logits))
        logits[index] = original - step
        down = float(f_loss(logits))
        logits[index] = original
        grad[index] = (up - down) / (2 * step)
    return grad


def torch_reference(
    logits,
    target,
    *,
    weight=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    grad_output=None,
    return_lse: bool = False,
):
    """The same quantities from ``torch.nn.functional.cross_entropy`` and autograd, in float64.

    Without z-loss and softcapping this is PyTorch's own reduction; with either, the loss is
    the plain expression of the definition: per-row cross-entropy of ``s*tanh(z/s)`` plus
    ``lse_square_scale * logsumexp^2`` on the rows that count, reduced like PyTorch reduces the
    row loss, except that a mean divides the z-term by the number of counted rows.  ``ignore_index`` is passed to PyTorch only with index targets.
    """
    import torch
    import torch.nn.functional as F

    # Tiny tensors: one thread avoids paying for thread wake-ups on a loaded machine.
    torch.set_num_threads(1)
    z = torch.tensor(np.asarray(logits, dtype=np.float64), requires_grad=True)
    target_array = np.asarray(target)
    probs = np.issubdtype(target_array.dtype, np.floating)
    t = torch.tensor(target_array.astype(np.float64 if probs else np.int64))
    w = None if weight is None else torch.tensor(np.asarray(weight, dtype=np.float64))
    options = {"weight": w, "label_smoothing": float(label_smoothing)}
    if not probs:
        options["ignore_index"] = int(ignore_index)
    capped = z if softcap is None else softcap * torch.tanh(z / softcap)
    lse = torch.logsumexp(capped, dim=1)
    if lse_square_scale == 0.0 and softcap is None:
        loss = F.cross_entropy(capped, t, reduction=reduction, **options)
    else:
        rows = F.cross_entropy(capped, t, reduction="none", **options)
        counted = torch.ones_like(lse, dtype=torch.bool) if probs else t != ignore_index
        z_rows = torch.where(counted, lse_square_scale * lse**2, torch.zeros_like(lse))
        rows = rows + z_rows
        if reduction == "none":
            loss = rows
        elif reduction == "sum":
            loss = rows.sum()
        else:
            if probs:
                denominator = torch.tensor(float(len(rows)), dtype=torch.float64)
            elif w is None:
                denominator = counted.sum().to(torch.float64)
            else:
                denominator = w[t[counted]].sum()
            # The z-term is a mean over the counted rows, whatever the class weights.
            loss = (rows - z_rows).sum() / denominator + z_rows.sum() / counted.sum()
    if reduction == "none":
        upstream = torch.ones_like(loss) if grad_output is None else torch.as_tensor(
            np.broadcast_to(np.asarray(grad_output, dtype=np.float64), loss.shape).copy()
        )
    else:
        upstream = torch.tensor(1.0 if grad_output is None else float(grad_output), dtype=torch.float64)
    loss.backward(upstream)
    result = (loss.detach().numpy().astype(np.float64), z.grad.numpy().astype(np.float64))
    if return_lse:
        result += (lse.detach().numpy().astype(np.float64),)
    return result
