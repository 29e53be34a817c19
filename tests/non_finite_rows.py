"""A batch of rows holding a NaN or an infinity at the first, a middle or the last class (in the
student's logits, and for a teacher loss in the teacher's), between finite rows, and for a loss
with class targets an ignored row holding both: the batch each backend's non-finite test runs.

The policy checked is cross-entropy's: a counted row holding a non-finite logit gets NaN loss
and a NaN gradient; an ignored row gets 0; every other row is exact.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from gradsmith.codegen.row_loss import SPECIALISED
from gradsmith.codegen.validate.row_loss import _reference
from gradsmith.derive.losses import LOSSES, definition

# The losses with generic kernels, and the tolerance of a finite row against the reference.
GENERIC = [name for name in LOSSES if name not in SPECIALISED]
TOLERANCE = {"float32": 2e-5, "float64": 1e-12}

VALUES = (-np.inf, np.inf, np.nan)
POSITIONS = ("first", "middle", "last")


@dataclasses.dataclass
class Batch:
    name: str
    logits: np.ndarray
    second: np.ndarray  # the teacher's logits, or class indices
    nonfinite: np.ndarray  # rows whose loss and gradient must be NaN
    ignored: np.ndarray  # rows that must be 0
    options: dict

    @property
    def teacher(self) -> bool:
        return definition(self.name).kind == "teacher"

    @property
    def clean(self) -> np.ndarray:
        return ~self.nonfinite & ~self.ignored


def batch(name: str, classes: int = 6, seed: int = 0, copies: int = 1) -> Batch:
    found = definition(name)
    teacher = found.kind == "teacher"
    rng = np.random.default_rng(seed)
    places = ("student", "teacher") if teacher else ("student",)
    cases = [(place, position, value) for place in places for position in POSITIONS
             for value in VALUES]
    n = len(cases) + 2 + (0 if teacher else 1)
    # Values float32 holds exactly, so one reference serves every dtype.
    logits = (rng.standard_normal((n, classes)) * 2).astype(np.float32).astype(np.float64)
    if teacher:
        second = (rng.standard_normal((n, classes)) * 2).astype(np.float32).astype(np.float64)
    else:
        second = rng.integers(0, classes, n)
    nonfinite = np.zeros(n, dtype=bool)
    ignored = np.zeros(n, dtype=bool)
    for row, (place, position, value) in enumerate(cases, start=1):
        column = {"first": 0, "middle": classes // 2, "last": classes - 1}[position]
        (logits if place == "student" else second)[row, column] = value
        nonfinite[row] = True
        if not teacher:  # the target at the non-finite class, or beside it
            second[row] = column if row % 2 else (column + 1) % classes
    if not teacher:
        logits[-2, 0], logits[-2, 3] = -np.inf, np.nan
        second[-2] = -100
        ignored[-2] = True
    options = {o.name: 2.0 if o.name == "gamma" else 1.5 for o in found.options}
    # copies > 1: the batch again and again, so that its rows fill whole segments of the C lanes.
    tile = (lambda a: np.tile(a, (copies,) + (1,) * (a.ndim - 1)))
    return Batch(name, tile(logits), tile(second), tile(nonfinite), tile(ignored), options)


def check(b: Batch, losses, grads, tolerance: float) -> None:
    """NaN rows, zero rows and the other rows against the 40-digit reference."""
    losses, grads = np.asarray(losses, np.float64), np.asarray(grads, np.float64)
    assert np.isnan(losses[b.nonfinite]).all(), losses
    assert np.isnan(grads[b.nonfinite]).all(), grads[b.nonfinite]
    assert (losses[b.ignored] == 0).all() and (grads[b.ignored] == 0).all()
    clean = b.clean
    want_loss, want_grad = _reference(definition(b.name), b.logits[clean],
                                      b.second[clean] if b.teacher else None,
                                      None if b.teacher else b.second[clean], b.options)
    scale = tolerance * (1 + np.abs(want_grad).max() + np.abs(want_loss).max())
    np.testing.assert_allclose(losses[clean], want_loss, rtol=0, atol=scale)
    np.testing.assert_allclose(grads[clean], want_grad, rtol=0, atol=scale)
