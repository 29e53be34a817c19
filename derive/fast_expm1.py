"""A vectorisable expm1 for arguments x <= 1/2, built on the proven exp of :mod:`fast_exp`.

For |x| <= 1/2 (the polynomial branch) expm1(x) = x Q(x) with Q(x) = sum_i x^i / (i+1)!, a
Taylor polynomial in Horner form; beyond, x < -1/2, it is exp(x) - 1 with the fast exp, where
|expm1(x)| >= 1 - e^(-1/2) keeps the subtraction from cancelling.  The branches are one select,
so a loop over it vectorises; NaN fails the comparison and takes exp(NaN) - 1 = NaN.

:func:`verify_expm1_approximation` proves the relative error bound in exact rational arithmetic
with the same pieces as the exp: Taylor remainder, coefficient rounding, Horner's running error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import sympy as sp
from gradsmith.derive.check import Verdict, check_equal
from gradsmith.derive.fast_exp import (
    DTYPES,
    _check_arguments,
    _exact,
    _exp_neg_lower,
    _float,
    _horner_error,
    _require,
    _round_to_precision,
    _significant_bits,
    exp_approximation,
    verify_exp_approximation,
)

__all__ = ["DTYPES", "Expm1Approximation", "Expm1ErrorBound", "expm1_approximation",
           "verify_expm1_approximation"]

# (precision, Taylor degree of Q, claimed relative error in units of the machine epsilon)
_FORMATS = {"float32": (24, 8, Fraction(3)), "float64": (53, 15, Fraction(3))}
RADIUS = Fraction(1, 2)  # the polynomial branch is |x| <= RADIUS; the domain is x <= RADIUS

x, poly, via_exp, result = sp.symbols("x poly via_exp result", real=True)


@dataclass(frozen=True)
class Expm1Approximation:
    """expm1(x) for x <= 1/2 in one precision, as printable steps (``exp`` is the fast exp)."""

    dtype: str
    precision: int
    degree: int
    threshold: sp.Float  # x >= -threshold takes the polynomial
    coefficients: tuple[sp.Float, ...]  # of Q, lowest first
    steps: tuple[tuple[sp.Symbol, sp.Expr], ...]
    claimed_relative_error: Fraction


@dataclass(frozen=True)
class Expm1ErrorBound:
    """result = expm1(x) (1 + e) with |e| <= relative, for every x <= 1/2."""

    polynomial_relative: Fraction
    exp_branch_relative: Fraction
    relative: Fraction
    verdicts: tuple[tuple[str, Verdict], ...]


@cache
def expm1_approximation(dtype: str, degree: int | None = None) -> Expm1Approximation:
    """Build the approximation for ``dtype`` ("float32" or "float64"); check it with verify."""
    _check_arguments(dtype, degree, _FORMATS)
    precision, default_degree, claim = _FORMATS[dtype]
    degree = default_degree if degree is None else degree
    coefficients = tuple(_float(_round_to_precision(Fraction(1, math.factorial(i + 1)), precision))
                         for i in range(degree + 1))
    q = sp.horner(sum((c * x**i for i, c in enumerate(coefficients)), sp.Integer(0)), x)
    threshold = _float(RADIUS)
    steps = (
        (poly, x * q),
        (via_exp, sp.exp(x) - 1),
        (result, sp.Piecewise((poly, x >= -threshold), (via_exp, True))),
    )
    return Expm1Approximation(dtype, precision, degree, threshold, coefficients, steps,
                              claim * Fraction(2) ** (1 - precision))


def _check_identities(approx: Expm1Approximation) -> tuple[tuple[str, Verdict], ...]:
    q = sum((sp.Rational(_exact(c)) * x**i for i, c in enumerate(approx.coefficients)),
            sp.Integer(0))
    return (
        ("Taylor series of exp(x) - 1", check_equal(
            sp.series(sp.exp(x) - 1, x, 0, approx.degree + 2).removeO(),
            sum((x ** (i + 1) / sp.factorial(i + 1) for i in range(approx.degree + 1)),
                sp.Integer(0)), step="Taylor series of exp(x) - 1")),
        ("poly = x Q(x)", check_equal(approx.steps[0][1], x * q, step="Horner form of x Q(x)")),
    )


@cache
def verify_expm1_approximation(approx: Expm1Approximation) -> Expm1ErrorBound:
    """Prove the relative error bound of ``approx``; raise ProofError naming the failing step."""
    verdicts = _check_identities(approx)
    p = approx.precision
    unit = Fraction(1, 2**p)
    radius = _exact(approx.threshold)
    _require(radius == RADIUS, "threshold", f"{approx.threshold}")
    coefficients = tuple(_exact(c) for c in approx.coefficients)
    for c in coefficients:
        _require(_significant_bits(c) <= p, "coefficient representable", f"{c}")
    exp_neg = _exp_neg_lower(radius)  # e^-R >= exp_neg, so e^R <= 1 / exp_neg
    # e^R >= its Taylor polynomial (positive terms), so e^-R <= 1 / that.
    exp_neg_upper = 1 / sum((radius**i / math.factorial(i) for i in range(8)), Fraction(0))
    # Q(x) = expm1(x)/x is increasing, so on |x| <= R it is at least (1 - e^-R)/R.
    smallest_q = (1 - exp_neg_upper) / radius
    n = approx.degree
    # sum_{i>n} |x|^i/(i+1)! <= R^(n+1)/(n+2)! e^R, and the coefficients' rounding.
    remainder = radius ** (n + 1) / math.factorial(n + 2) / exp_neg
    rounding = sum((abs(c - Fraction(1, math.factorial(i + 1))) * radius**i
                    for i, c in enumerate(coefficients)), Fraction(0))
    horner = _horner_error(coefficients, radius, unit)
    # Horner's last addition and the product by x each round once more.
    polynomial_relative = (1 + (remainder + rounding + horner) / smallest_q) * (1 + unit) ** 2 - 1
    exp_bound = verify_exp_approximation(exp_approximation(approx.dtype))
    # x < -R: exp(x) <= e^-R, |expm1(x)| >= 1 - e^-R; fl(E - 1) rounds once.
    exp_branch_relative = (1 + (exp_bound.relative * exp_neg_upper + exp_bound.absolute)
                           / (1 - exp_neg_upper)) * (1 + unit) - 1
    relative = max(polynomial_relative, exp_branch_relative)
    _require(relative <= approx.claimed_relative_error, "relative error within the claim",
             f"proven {float(relative):.3e} > claimed {float(approx.claimed_relative_error):.3e}"
             f" (degree {n})")
    return Expm1ErrorBound(polynomial_relative, exp_branch_relative, relative, verdicts)
