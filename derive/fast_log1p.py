"""A vectorisable log1p for x >= 0, built on the proven log of :mod:`fast_log` (Kahan's form).

With u = fl(1 + x): where u rounds to 1, log1p(x) is x itself; below 2^(p-1), u - 1 is exact
and log1p(x) = log(u) x / (u - 1), the fast log of u times a ratio that corrects the rounding of
1 + x; from 2^(p-1) on, log(u) alone.  The branches are selects, so a loop over it vectorises;
+inf takes log(+inf) = +inf and NaN fails every comparison and stays NaN.

Why the ratio works: log1p(x) = x g(1 + x) with g(v) = log(v)/(v - 1), and the computed value
is x g(u) times roundings.  For v > 1, 0 <= v |g'(v)/g(v)| = v/(v - 1) - 1/log(v) <= 1 (both
ends are (v - 1)/v <= log v <= v - 1), so g(u)/g(1 + x) is within a factor exp(u_r/(1 - u_r))
of 1, u_r = 2^-p, however many digits 1 + x lost.

:func:`verify_log1p_approximation` checks those identities symbolically and proves the relative
error bound in exact rational arithmetic from the fast log's proven bound and one rounding
each for 1 + x, the ratio and the product.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import sympy as sp
from gradsmith.derive.check import Verdict, check_equal
from gradsmith.derive.fast_exp import DTYPES, _exact, _float, _irrational, _require
from gradsmith.derive.fast_log import log_approximation, verify_log_approximation

__all__ = ["DTYPES", "Log1pApproximation", "Log1pErrorBound", "log1p_approximation",
           "verify_log1p_approximation"]

# (precision, claimed relative error in units of the machine epsilon 2^(1-p))
_FORMATS = {"float32": (24, Fraction(5)), "float64": (53, Fraction(5))}

x = sp.Symbol("x", real=True)
one_plus, shifted_down, ratio, log_one_plus, result = sp.symbols(
    "one_plus shifted_down ratio log_one_plus result", real=True)


@dataclass(frozen=True)
class Log1pApproximation:
    """log1p(x) for x >= 0 in one precision, as printable steps (``log`` is the fast log)."""

    dtype: str
    precision: int
    limit: sp.Float  # from here on log(1 + x) alone: u - 1 is exact below it
    steps: tuple[tuple[sp.Symbol, sp.Expr], ...]
    claimed_relative_error: Fraction


@dataclass(frozen=True)
class Log1pErrorBound:
    """result = log1p(x) (1 + e) with |e| <= relative, for every x >= 0."""

    rounds_to_one_relative: Fraction  # u = 1: the result is x
    ratio_relative: Fraction  # 1 < u, x < limit: log(u) x / (u - 1)
    large_relative: Fraction  # x >= limit: log(u)
    relative: Fraction
    verdicts: tuple[tuple[str, Verdict], ...]


@cache
def log1p_approximation(dtype: str) -> Log1pApproximation:
    """Build the approximation for ``dtype`` ("float32" or "float64"); check it with verify."""
    if dtype not in _FORMATS:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    precision, claim = _FORMATS[dtype]
    limit = _float(Fraction(2) ** (precision - 1))
    steps = (
        (one_plus, 1 + x),
        (shifted_down, one_plus - 1),
        (ratio, x / shifted_down),
        (log_one_plus, sp.log(one_plus)),
        (result, sp.Piecewise((x, sp.Eq(one_plus, 1)), (log_one_plus, x >= limit),
                              (log_one_plus * ratio, True))),
    )
    return Log1pApproximation(dtype, precision, limit, steps, claim * Fraction(2) ** (1 - precision))


def _check_identities(approx: Log1pApproximation) -> tuple[tuple[str, Verdict], ...]:
    v = sp.Symbol("v", positive=True)
    positive_x = sp.Symbol("x", positive=True)
    g = sp.log(v) / (v - 1)
    lower_gap, upper_gap = sp.log(v) - (v - 1) / v, v - 1 - sp.log(v)
    steps = dict(approx.steps)
    return (
        ("log1p(x) = log(1 + x) x / ((1 + x) - 1)", check_equal(
            sp.log(1 + positive_x),
            (steps[log_one_plus] * steps[ratio]).subs(shifted_down, steps[shifted_down])
            .subs(one_plus, 1 + positive_x).subs(x, positive_x),
            step="the ratio's form of log1p when 1 + x is exact")),
        ("v g'(v)/g(v) = 1/log v - v/(v - 1)", check_equal(
            v * sp.diff(g, v) / g, 1 / sp.log(v) - v / (v - 1),
            step="v g'/g for g(v) = log(v)/(v - 1)")),
        # log v - (v - 1)/v and v - 1 - log v vanish at v = 1 and grow for v > 1 (their
        # derivatives are (v - 1)/v^2 and (v - 1)/v): 0 <= v/(v - 1) - 1/log v <= 1 there.
        ("d/dv (log v - (v - 1)/v) = (v - 1)/v^2", check_equal(
            sp.diff(lower_gap, v), (v - 1) / v**2, step="derivative of log v - (v - 1)/v")),
        ("d/dv (v - 1 - log v) = (v - 1)/v", check_equal(
            sp.diff(upper_gap, v), (v - 1) / v, step="derivative of v - 1 - log v")),
        ("both gaps vanish at v = 1", check_equal(
            lower_gap.subs(v, 1) + upper_gap.subs(v, 1), sp.Integer(0), step="the gaps at v = 1")),
    )


@cache
def verify_log1p_approximation(approx: Log1pApproximation) -> Log1pErrorBound:
    """Prove the relative error bound of ``approx``; raise ProofError naming the failing step."""
    verdicts = _check_identities(approx)
    p = approx.precision
    unit = Fraction(1, 2**p)
    limit = _exact(approx.limit)
    # Below the limit u <= 2^(p-1) + 1 <= 2^p: u and 1 are multiples of ulp(u) <= 1, so u - 1 is.
    _require(limit + 1 <= Fraction(2) ** p, "u - 1 exact below the limit", f"limit {limit}")
    log_bound = verify_log_approximation(log_approximation(approx.dtype)).relative
    # u = fl(1 + x) = 1 only for x <= u_r (a tie rounds to even, to 1); log1p(x) >= x - x^2/2.
    rounds_to_one = (unit / 2) / (1 - unit / 2)
    # |u - (1 + x)| <= u_r (1 + x) and min(u, 1 + x) >= (1 + x)(1 - u_r): with
    # v |g'/g| <= 1, |log g(u) - log g(1 + x)| <= u_r/(1 - u_r) =: a, e^a <= 1/(1 - a).
    a = unit / (1 - unit)
    high = (1 + unit) ** 2 * (1 + log_bound) / (1 - a) - 1
    low = 1 - (1 - a) * (1 - unit) ** 2 * (1 - log_bound)
    ratio_relative = max(high, low)
    # x >= limit: |log u - log(1 + x)| <= a against log(1 + x) >= (p - 1) ln 2.
    ln2, ln2_error = _irrational("ln2")
    large_relative = (1 + log_bound) * (1 + a / ((p - 1) * (ln2 - ln2_error))) - 1
    relative = max(rounds_to_one, ratio_relative, large_relative)
    _require(relative <= approx.claimed_relative_error, "relative error within the claim",
             f"proven {float(relative):.3e} > claimed {float(approx.claimed_relative_error):.3e}")
    return Log1pErrorBound(rounds_to_one, ratio_relative, large_relative, relative, verdicts)
