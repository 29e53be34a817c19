"""How close a kernel's result must be to the exact one, per dtype, and an error as a fraction
of that allowance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= rtol * |expected| + atol * scale`` elementwise.

    ``scale`` is the largest finite magnitude of the expected array (1 when it is all zero),
    so ``atol`` is relative to the size of the quantity (a mean gradient is about 1/N).
    """

    rtol: float
    atol: float

    def scaled(self, factor: float) -> Tolerance:
        return Tolerance(self.rtol * factor, self.atol * factor)


# Against the exact result on the inputs as stored in the dtype.  float64 and float32 allow a
# few hundred ulps (row sums over up to ~100 classes, exp/log/tanh each within a few ulps);
# float16 and bfloat16 store the result, so one rounding of the output dominates (2^-11 and
# 2^-8 relative), with float32 arithmetic inside.
TOLERANCES = {
    "float64": Tolerance(rtol=1e-10, atol=1e-12),
    "float32": Tolerance(rtol=3e-5, atol=3e-6),
    "float16": Tolerance(rtol=2e-3, atol=1e-3),
    "bfloat16": Tolerance(rtol=1.6e-2, atol=8e-3),
}


def error_fraction(actual, expected, tolerance: Tolerance, mask=None) -> float:
    """The worst ``|actual - expected|`` as a fraction of the allowance (<= 1 passes).

    NaN must be where ``expected`` has NaN (else the fraction is infinite); ``mask`` selects the
    elements to compare (default: all).
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    if mask is not None:
        actual, expected = actual[mask], expected[mask]
    if not np.array_equal(np.isnan(actual), np.isnan(expected)):
        return float("inf")
    finite = ~np.isnan(expected)
    if not finite.any():
        return 0.0
    magnitudes = np.abs(expected[finite & np.isfinite(expected)])
    scale = float(magnitudes.max()) if magnitudes.size and magnitudes.max() > 0 else 1.0
    allowed = tolerance.rtol * np.abs(expected[finite]) + tolerance.atol * scale
    with np.errstate(invalid="ignore"):
        difference = np.abs(actual[finite] - expected[finite])
    difference = np.where(actual[finite] == expected[finite], 0.0, difference)
    return float(np.max(difference / allowed))
