"""The high-precision reference for softmax cross-entropy with every option of the callable.

``reference_cross_entropy`` evaluates PyTorch's definition of ``F.cross_entropy`` (plus z-loss
and softcapping) in mpmath at 40 significant digits and differentiates it by forward-mode
automatic differentiation on that same definition, so neither the loss nor the gradient uses
anything from ``gradsmith.derive``.  ``finite_difference_grad`` gives central differences of any
loss function.

Non-finite logits follow the arithmetic, as in PyTorch: exp(-inf) = 0, so a -inf logit is a
class of probability 0 (a -inf target gives an infinite loss), and NaN, +inf or a row of -inf
alone make the row's loss, gradient and lse NaN.  Where gradsmith differs from PyTorch the
reference follows gradsmith: an ignored row has zero loss and gradient whatever its logits
(PyTorch gives a NaN gradient in an ignored row holding NaN).  ``ignore_index`` is not used
with probability targets (PyTorch and gradsmith refuse it unless it is -100).
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


def _exp(x):
    if not isinstance(x, _Dual):
        return mpmath.exp(x)
    value = mpmath.exp(x.value)
    return _Dual(value, x.grad * value)


def _log(x):
    if not isinstance(x, _Dual):
        return mpmath.log(x)
    return _Dual(mpmath.log(x.value), x.grad * (1 / x.value))


def _tanh(x):
    if not isinstance(x, _Dual):
        return mpmath.tanh(x)
    value = mpmath.tanh(x.value)
    return _Dual(value, x.grad * (1 - value * value))


def _value(x):
    return x.value if isinstance(x, _Dual) else x


def _sum(terms):
    """The sum of duals (or plain numbers) with no rounding between the terms' values."""
    terms = list(terms)
    duals = [t for t in terms if isinstance(t, _Dual)]
    value = mpmath.fsum(_value(t) for t in terms)
    if not duals:
        return value
    return _Dual(value, np.sum([t.grad for t in duals], axis=0))


def _row(
    logits: np.ndarray,
    target: int | np.ndarray,
    weight: np.ndarray,
    label_smoothing,
    lse_square_scale,
    softcap,
    columns,
) -> tuple[mpmath.mpf, np.ndarray, mpmath.mpf]:
    """Loss of one row, its gradient with respect to the logits of ``columns`` (in that
    order), the row's lse, and the z-term's (value, gradient) within them."""
    classes = len(logits)
    zero = mpmath.mpf(0)
    position = {int(j): k for k, j in enumerate(columns)}
    inputs = []
    for j, value in enumerate(logits):
        if j in position:
            seed = np.array([zero] * len(position), dtype=object)
            seed[position[j]] = mpmath.mpf(1)
            inputs.append(_Dual(mpmath.mpf(float(value)), seed))
        else:
            inputs.append(mpmath.mpf(float(value)))
    if softcap is not None:
        cap = mpmath.mpf(softcap)
        inputs = [cap * _tanh(z * (1 / cap)) for z in inputs]
    # The maximum enters as a constant: the definition is exactly invariant under the shift.
    # A row of -inf alone then shifts by -inf: NaN throughout, as PyTorch's loss and gradient.
    shift = max(_value(u) for u in inputs)
    shifted = [u - shift for u in inputs]
    log_norm = _log(_sum(_exp(v) for v in shifted))
    log_probs = [v - log_norm for v in shifted]
    lse = shift + log_norm
    eps = mpmath.mpf(label_smoothing)
    w = [mpmath.mpf(float(x)) for x in weight]
    if isinstance(target, np.ndarray):
        smoothed = [(1 - eps) * mpmath.mpf(float(y)) + eps / classes for y in target]
        loss = -_sum(wj * yj * lp for wj, yj, lp in zip(w, smoothed, log_probs))
    else:
        nll = -(w[target] * log_probs[target])
        loss = nll
        if eps != 0:  # as PyTorch: no smoothing term, so a -inf logit's infinite term is absent
            smooth = -_sum(wj * lp for wj, lp in zip(w, log_probs))
            loss = (1 - eps) * nll + (eps / classes) * smooth
    # The z-term apart too: a mean divides it by the counted rows, not by the weights.
    z_loss = mpmath.mpf(lse_square_scale) * (lse * lse)
    loss = loss + z_loss
    if not isinstance(loss, _Dual):  # no column seeded
        empty = np.zeros(0, dtype=object)
        return loss, empty, lse, (z_loss, empty)
    z_grad = z_loss.grad if isinstance(z_loss, _Dual) else loss.grad * 0
    return loss.value, loss.grad, _value(lse), (_value(z_loss), z_grad)


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
    columns=None,
):
    """``(loss, dlogits[, lse])`` of ``gradsmith.load``'s callable, as float64 arrays, at ``digits``.

    Inputs are taken exactly (a float32 array is read as the float64 values it holds).  With
    ``columns`` (class indices), only those columns of ``dlogits`` are computed and the others
    are NaN: forward mode then costs O(C * len(columns)) per row instead of O(C^2).  Rows that
    repeat (same logits, target) are evaluated once.
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

    columns = np.arange(classes) if columns is None else np.unique(np.asarray(columns, np.int64))
    rows_seen = {}
    with mpmath.workdps(digits):
        row_loss = [mpmath.mpf(0)] * n
        row_grad = np.zeros((n, len(columns)), dtype=object)
        row_grad[:] = mpmath.mpf(0)
        row_z_loss = [mpmath.mpf(0)] * n
        row_z_grad = np.zeros((n, len(columns)), dtype=object)
        row_z_grad[:] = mpmath.mpf(0)
        lse = np.full(n, np.nan)
        kept = np.ones(n, dtype=bool) if probs else target != ignore_index
        denominator = mpmath.mpf(0)
        for i in range(n):
            if kept[i]:
                denominator += 1 if probs else mpmath.mpf(float(weight[target[i]]))
            row_target = target[i] if probs else int(target[i]) if kept[i] else 0
            key = (logits[i].tobytes(), np.asarray(row_target).tobytes())
            if key not in rows_seen:
                rows_seen[key] = _row(logits[i], row_target, weight, label_smoothing,
                                      lse_square_scale, softcap, columns)
            loss_i, grad_i, lse_i, (z_i, z_grad_i) = rows_seen[key]
            lse[i] = float(lse_i)
            if kept[i]:
                row_loss[i], row_grad[i] = loss_i, grad_i
                row_z_loss[i], row_z_grad[i] = z_i, z_grad_i

        dlogits = np.full((n, classes), np.nan)
        dlogits[:, columns] = 0.0
        if reduction == "mean":
            factor = scales[0] / denominator if denominator != 0 else mpmath.nan
            # The z-term over the counted rows instead of the denominator.
            z_factor = scales[0] / int(kept.sum()) - factor if denominator != 0 else mpmath.nan
        for i in range(n):
            if not kept[i]:
                continue
            if reduction == "mean":
                dlogits[i, columns] = [float(factor * g + z_factor * zg)
                                       for g, zg in zip(row_grad[i], row_z_grad[i])]
            else:
                dlogits[i, columns] = [float(scales[i] * g) for g in row_grad[i]]
        per_row = np.array([float(x) for x in row_loss], dtype=np.float64)
        if reduction == "none":
            loss = per_row
        elif reduction == "sum":
            loss = np.array(float(mpmath.fsum(row_loss)))
        elif denominator == 0:
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
