"""A vectorisable tanh for every real x, built on the proven expm1 of :mod:`fast_expm1`.

tanh(t) = -E / (E + 2) with E = expm1(-2t), for t = |x| >= 0, and tanh(x) = -tanh(-x) gives the
sign: one select.  The argument of expm1 is <= 0, in its domain, and -2t is exact (beyond half
the largest double it is -inf, and E = -1 gives 1, which is tanh there rounded).  E lies in
[-1, 0], so E + 2 >= 1 and nothing cancels.  The arithmetic is in float64 for both kernels' dtypes:
a float32 result is then one rounding of a value within 1.4e-15 of tanh.  NaN passes through
expm1 and the select.

:func:`verify_tanh_approximation` proves the relative error bound in exact rational arithmetic
from the expm1's proven bound, one rounding for the sum, one for the quotient and, for float32,
one for the final conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import sympy as sp
from gradsmith.derive.check import Verdict, check_equal, without_expm1
from gradsmith.derive.fast_exp import DTYPES, _require
from gradsmith.derive.fast_expm1 import expm1_approximation, verify_expm1_approximation
from sympy.codegen.cfunctions import expm1

__all__ = ["DTYPES", "WORKING_DTYPE", "TanhApproximation", "TanhErrorBound", "tanh_approximation",
           "verify_tanh_approximation"]

WORKING_DTYPE = "float64"
# claimed relative error: float32 is half an ulp (the conversion) and a hair for the float64 part
_CLAIMS = {"float32": Fraction(1, 2**24) + Fraction(1, 2**48), "float64": Fraction(16, 2**53)}

x, t, e, magnitude, result = sp.symbols("x t e magnitude result", real=True)


@dataclass(frozen=True)
class TanhApproximation:
    """tanh(x) for ``dtype``, as printable steps in the working dtype (``expm1`` is the fast one)."""

    dtype: str
    working_dtype: str
    steps: tuple[tuple[sp.Symbol, sp.Expr], ...]
    claimed_relative_error: Fraction


@dataclass(frozen=True)
class TanhErrorBound:
    """result = tanh(x) (1 + e) with |e| <= relative, for every real x."""

    working_relative: Fraction  # before the conversion to ``dtype``
    relative: Fraction
    verdicts: tuple[tuple[str, Verdict], ...]


@cache
def tanh_approximation(dtype: str) -> TanhApproximation:
    """Build the approximation for ``dtype`` ("float32" or "float64"); check it with verify."""
    if dtype not in _CLAIMS:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    steps = (
        (t, sp.Abs(x)),
        (e, expm1(-2 * t)),
        (magnitude, -e / (e + 2)),
        (result, sp.Piecewise((-magnitude, x < 0), (magnitude, True))),
    )
    return TanhApproximation(dtype, WORKING_DTYPE, steps, _CLAIMS[dtype])


def _check_identities(approx: TanhApproximation) -> tuple[tuple[str, Verdict], ...]:
    steps = dict(approx.steps)
    s = sp.Symbol("s", nonnegative=True)
    from_steps = without_expm1(steps[magnitude].subs(e, steps[e]).subs(t, s))
    return (
        ("tanh(t) = -expm1(-2t) / (expm1(-2t) + 2), t >= 0", check_equal(
            from_steps.rewrite(sp.exp), sp.tanh(s).rewrite(sp.exp),
            step="tanh(t) = -expm1(-2t) / (expm1(-2t) + 2)")),
        ("tanh(x) = -tanh(-x)", check_equal(
            sp.tanh(x), -sp.tanh(-x), step="tanh is odd")),
        ("the steps are t = |x|, E = expm1(-2t) and the select on the sign of x", check_equal(
            steps[result].subs(magnitude, from_steps.subs(s, t)).subs(t, steps[t]).rewrite(sp.exp),
            sp.tanh(x).rewrite(sp.exp), step="the printed steps compose to tanh(x)")),
    )


@cache
def verify_tanh_approximation(approx: TanhApproximation) -> TanhErrorBound:
    """Prove the relative error bound of ``approx``; raise ProofError naming the failing step."""
    verdicts = _check_identities(approx)
    expm1_bound = verify_expm1_approximation(expm1_approximation(approx.working_dtype))
    delta = expm1_bound.relative  # E = expm1(-2t) (1 + d1), |d1| <= delta; -2t <= 0 is in its domain
    unit = Fraction(1, 2 ** expm1_approximation(approx.working_dtype).precision)
    _require(delta < Fraction(1, 2), "expm1 bound below 1/2", f"{float(delta):.3e}")
    # fl(E + 2) = (expm1 + 2)(1 + expm1 d1 / (expm1 + 2))(1 + d2) with |expm1| <= expm1 + 2 on
    # [-1, 0]; fl(-E / D) rounds once more (d3); negation and the select are exact.
    working = (1 + delta) * (1 + unit) / ((1 - delta) * (1 - unit)) - 1
    output_unit = Fraction(1, 2 ** expm1_approximation(approx.dtype).precision)
    relative = working if approx.dtype == approx.working_dtype else (1 + working) * (1 + output_unit) - 1
    _require(relative <= approx.claimed_relative_error, "relative error within the claim",
             f"proven {float(relative):.3e} > claimed {float(approx.claimed_relative_error):.3e}")
    return TanhErrorBound(working, relative, verdicts)
