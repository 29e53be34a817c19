"""``gradsmith validate --loss NAME``: a row loss's kernels of a tree against SymPy's derivative
of the loss's definition for concrete C, evaluated at 40 digits, and finite differences.

The reference uses only the definition (never the fitted kernel spec): the per-row loss is
written out for explicit z_0..z_{C-1}, differentiated by SymPy and evaluated with mpmath.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp
from gradsmith.derive.row_loss_definition import ConcreteRow, LossDefinition

CLASS_COUNTS = (1, 3, 7)
ROWS = 3
TOLERANCE = {"float32": 2e-5, "float64": 1e-11}
DIGITS = 40


@dataclass(frozen=True)
class LossRow:
    backend: str
    dtype: str
    classes: int
    worst: float  # the largest error as a fraction of the tolerance
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.worst <= 1


def _reference(found: LossDefinition, logits, second, target, options):
    """Per-row loss and gradient of the definition, at 40 digits."""
    classes = logits.shape[1]
    symbols = sp.symbols(f"z_0:{classes}", real=True)
    values = {sp.Symbol(o.name, real=True): options[o.name] for o in found.options}
    scale = sp.sympify(found.scale(**{o.name: sp.Float(options[o.name], DIGITS)
                                      for o in found.options}))
    losses, grads = [], []
    for n in range(logits.shape[0]):
        teacher = [sp.Float(float(v), DIGITS) for v in second[n]] if second is not None else None
        row = ConcreteRow(symbols, t=None if target is None else int(target[n]), u=teacher,
                          scale=scale)
        loss = sp.sympify(found.loss(row, **{str(k): sp.Float(v, DIGITS) for k, v in values.items()}))
        point = {s: sp.Float(float(v), DIGITS) for s, v in zip(symbols, logits[n], strict=True)}
        losses.append(float(loss.evalf(DIGITS, subs=point)))
        grads.append([float(sp.diff(loss, s).evalf(DIGITS, subs=point)) for s in symbols])
    return np.array(losses), np.array(grads)


def validate_loss(found: LossDefinition, function, backend: str, dtype: str) -> list[LossRow]:
    """Check ``function`` (the loaded callable) for each class count against the reference."""
    rows = []
    rng = np.random.default_rng(0)
    options = {o.name: (o.default if o.default > (o.low or 0) or not o.low_open else 1.0)
               for o in found.options}
    for classes in CLASS_COUNTS:
        logits = (rng.standard_normal((ROWS, classes)) * 3).astype(dtype)
        if found.kind == "teacher":
            second = (rng.standard_normal((ROWS, classes)) * 3).astype(dtype)
            target = None
        else:
            target = rng.integers(0, classes, ROWS)
            second = target
        try:
            loss, grad = function(logits, second, reduction="none", **options)
            want_loss, want_grad = _reference(found, logits.astype(np.float64),
                                              None if target is not None else second, target,
                                              options)
            scale = TOLERANCE[dtype] * (1 + np.abs(want_grad).max() + np.abs(want_loss).max())
            worst = max(np.abs(loss - want_loss).max(), np.abs(grad - want_grad).max()) / scale
            rows.append(LossRow(backend, dtype, classes, float(worst)))
        except Exception as error:  # noqa: BLE001 - a kernel that fails is a failed row
            rows.append(LossRow(backend, dtype, classes, float("inf"), f"{type(error).__name__}: {error}"))
    return rows
