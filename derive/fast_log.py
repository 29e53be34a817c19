"""A vectorisable log for positive normal x: exponent bits, an atanh polynomial, a proven bound.

x = 2^k m with m in [c, 2c) and c the float nearest sqrt(1/2), found by integer arithmetic on
the bits of x (no libm, no float-to-int conversion): with B = 2^(exponent bits - 1),
t = bits(x) - bits(c) + B 2^M (unsigned, wrapping; M the mantissa bits) has t >> M = k + B and
its low M bits plus bits(c) are the bits of m.  The float k comes from the shifter of
:mod:`fast_exp` in reverse: the bits of 1.5 2^(p-1) plus k + B are those of 1.5 2^(p-1) + k + B,
and subtracting 1.5 2^(p-1) + B is exact.  Then log m = 2 atanh(s) with s = (m - 1)/(m + 1),
|s| <= (sqrt2 - 1)/(sqrt2 + 1) < 0.172, evaluated as 2s + s z T(z), z = s^2, T the Taylor
polynomial of (2 atanh(s) - 2s)/s^3 in Horner form; m - 1 is exact (Sterbenz).  The result is
k ln2_hi + (k ln2_lo + log m), k ln2_hi exact (Cody and Waite), so for k != 0, where
|log x| >= |k| ln2 - ln2/2, nothing cancels beyond one bit.  +inf and NaN pass through (one
select); zero, subnormals and negative x are outside the domain.

:func:`verify_log_approximation` proves the relative error bound in exact rational arithmetic:
the division and its effect through atanh, the truncation remainder, the rounding of the
coefficients, a running error bound of Horner's rule (each operation rounded at most once, so it
also holds when the compiler fuses a multiply and an add), and the final two additions.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import mpmath
import sympy as sp
from gradsmith.derive.check import Verdict, check_equal
from gradsmith.derive.fast_exp import (
    DTYPES,
    _bits,
    _check_arguments,
    _exact,
    _float,
    _high_precision,
    _horner_error,
    _irrational,
    _require,
    _round_to_precision,
    _significant_bits,
)

__all__ = ["DTYPES", "LogApproximation", "LogErrorBound", "log_approximation",
           "verify_log_approximation"]


@dataclass(frozen=True)
class _Format:
    precision: int  # significand bits, hidden bit included
    exponent_bits: int
    degree: int  # coefficients of the tail polynomial T in z = s^2 (degree 2d + 1 in s)
    claimed_relative_error: Fraction  # in units of 2^-(p-1), the machine epsilon


_FORMATS = {
    "float32": _Format(24, 8, 4, Fraction(3)),
    "float64": _Format(53, 11, 9, Fraction(3)),
}

x = sp.Symbol("x", real=True)
exponent_shifted = sp.Symbol("exponent_shifted", real=True)
mantissa = sp.Symbol("mantissa", positive=True)
k = sp.Symbol("k", real=True)
f = sp.Symbol("f", real=True)
s = sp.Symbol("s", real=True)
z = sp.Symbol("z", real=True)
tail = sp.Symbol("tail", real=True)
log_mantissa = sp.Symbol("log_mantissa", real=True)
low = sp.Symbol("low", real=True)
approximation = sp.Symbol("approximation", real=True)
result = sp.Symbol("result", real=True)


@dataclass(frozen=True)
class LogApproximation:
    """log(x) for positive normal x in one precision, as printable steps plus integer constants.

    Before the steps the kernel computes, on unsigned ``bit_width`` integers (wrapping),
    t = bits(x) + offset_bits, then ``exponent_shifted`` = float of bits
    (t >> mantissa_bits) + shifter_bits and ``mantissa`` = float of bits
    (t & mantissa_mask) + mantissa_base_bits.  That is structure, not arithmetic on values, so
    it is not a SymPy expression.  Every float constant is exactly representable in ``dtype``.
    """

    dtype: str
    precision: int
    degree: int
    mantissa_base: sp.Float  # c: m in [c, 2c)
    exponent_offset: sp.Float  # shifter + B
    ln2_hi: sp.Float
    ln2_lo: sp.Float
    largest: sp.Float  # the largest finite number; above it (inf) and NaN pass through
    coefficients: tuple[sp.Float, ...]  # of T, lowest first
    polynomial: sp.Expr  # T in Horner form in z
    steps: tuple[tuple[sp.Symbol, sp.Expr], ...]
    bit_width: int
    mantissa_bits: int
    exponent_bias: int  # B
    offset_bits: int
    shifter_bits: int
    mantissa_base_bits: int
    mantissa_mask: int
    min_k: int
    max_k: int
    claimed_relative_error: Fraction


@dataclass(frozen=True)
class LogErrorBound:
    """result = log(x) (1 + e) with |e| <= relative for every positive normal x."""

    reduced_radius: Fraction  # |s| <= this for every computed s
    division_relative: Fraction  # of 2 atanh(computed s) against log m
    polynomial_relative: Fraction  # of the computed log m against 2 atanh(computed s)
    mantissa_relative: Fraction  # of the computed log m against log m (the case k = 0)
    exponent_relative: Fraction  # of the result for k != 0
    relative: Fraction
    verdicts: tuple[tuple[str, Verdict], ...]


def _tail_coefficient(i: int) -> Fraction:
    """Coefficient of z^i in (2 atanh(s) - 2s) / s^3 = sum_i 2 z^i / (2i + 3)."""
    return Fraction(2, 2 * i + 3)


@cache
def log_approximation(dtype: str, degree: int | None = None) -> LogApproximation:
    """Build the approximation for ``dtype`` ("float32" or "float64"); check it with verify."""
    _check_arguments(dtype, degree, _FORMATS)
    fmt = _FORMATS[dtype]
    degree = fmt.degree if degree is None else degree
    p = fmt.precision
    bit_width = 32 if dtype == "float32" else 64
    mantissa_bits = p - 1
    ieee_bias = 2 ** (fmt.exponent_bits - 1) - 1
    bias = 2 ** (fmt.exponent_bits - 1)
    min_k, max_k = -ieee_bias + 1, ieee_bias + 1  # x = 2^k m, m in [c, 2c), x normal
    with mpmath.workprec(200):
        base = _round_to_precision(_high_precision(mpmath.sqrt(mpmath.mpf(1) / 2)), p)
    ln2, _ = _irrational("ln2")
    ln2_hi = _round_to_precision(ln2, p - max(-min_k, max_k).bit_length())
    ln2_lo = _round_to_precision(ln2 - ln2_hi, p)
    shifter = Fraction(3, 2) * 2 ** (p - 1)
    largest = (2 - Fraction(1, 2 ** (p - 1))) * Fraction(2) ** ieee_bias
    coefficients = tuple(_float(_round_to_precision(_tail_coefficient(i), p)) for i in range(degree))
    polynomial = sp.horner(sum((c * z**i for i, c in enumerate(coefficients)), sp.Integer(0)), z)
    offset_f, hi_f, lo_f = _float(shifter + bias), _float(ln2_hi), _float(ln2_lo)
    largest_f = _float(largest)
    steps = (
        (k, exponent_shifted - offset_f),
        (f, mantissa - 1),
        (s, f / (mantissa + 1)),
        (z, s * s),
        (tail, polynomial),
        (log_mantissa, 2 * s + s * z * tail),
        (low, k * lo_f + log_mantissa),
        (approximation, k * hi_f + low),
        (result, sp.Piecewise((approximation, x <= largest_f), (x, True))),
    )
    base_bits = _bits(base, dtype)
    return LogApproximation(
        dtype=dtype,
        precision=p,
        degree=degree,
        mantissa_base=_float(base),
        exponent_offset=offset_f,
        ln2_hi=hi_f,
        ln2_lo=lo_f,
        largest=largest_f,
        coefficients=coefficients,
        polynomial=polynomial,
        steps=steps,
        bit_width=bit_width,
        mantissa_bits=mantissa_bits,
        exponent_bias=bias,
        offset_bits=((bias << mantissa_bits) - base_bits) % 2**bit_width,
        shifter_bits=_bits(shifter, dtype),
        mantissa_base_bits=base_bits,
        mantissa_mask=2**mantissa_bits - 1,
        min_k=min_k,
        max_k=max_k,
        claimed_relative_error=fmt.claimed_relative_error * Fraction(2) ** (1 - p),
    )


# ---------------------------------------------------------------------------------------------
# The proof.


def _check_identities(approx: LogApproximation) -> tuple[tuple[str, Verdict], ...]:
    integer_k = sp.Symbol("k", integer=True)
    positive_m = sp.Symbol("m", positive=True)
    series_s = sp.Symbol("s", real=True)
    d = approx.degree
    atanh_series = sum((2 * series_s ** (2 * i + 1) / (2 * i + 1) for i in range(d + 2)),
                       sp.Integer(0))
    tail_exact = sum((sp.Rational(_exact(c)) * z**i for i, c in enumerate(approx.coefficients)),
                     sp.Integer(0))
    return (
        ("log(2^k m) = k log2 + log m", check_equal(
            sp.expand_log(sp.log(2**integer_k * positive_m), force=True),
            integer_k * sp.log(2) + sp.log(positive_m), step="log(2^k m) = k log 2 + log m")),
        ("log m = 2 atanh((m-1)/(m+1))", check_equal(
            sp.log(positive_m),
            (2 * sp.atanh((positive_m - 1) / (positive_m + 1))).rewrite(sp.log),
            step="log m = 2 atanh((m - 1)/(m + 1))")),
        ("Taylor series of 2 atanh(s)", check_equal(
            sp.series(2 * sp.atanh(series_s), series_s, 0, 2 * d + 4).removeO(), atanh_series,
            step="Taylor series of 2 atanh(s)")),
        ("Horner form = coefficients", check_equal(
            approx.polynomial, tail_exact, step="Horner form of the tail polynomial")),
    )


def _decode(bits: int, width: int) -> float:
    pattern = struct.pack("<I" if width == 32 else "<Q", bits % 2**width)
    return struct.unpack("<f" if width == 32 else "<d", pattern)[0]


def _reduce_bits(approx: LogApproximation, value: float) -> tuple[float, float]:
    """(exponent_shifted, mantissa) as the kernel computes them from the bits of ``value``."""
    width, shift = approx.bit_width, approx.mantissa_bits
    t = (_bits(Fraction(value), approx.dtype) + approx.offset_bits) % 2**width
    exponent = _decode((t >> shift) + approx.shifter_bits, width)
    return exponent, _decode((t & approx.mantissa_mask) + approx.mantissa_base_bits, width)


def _check_structure(approx: LogApproximation) -> None:
    p = approx.precision
    for name in ("mantissa_base", "exponent_offset", "ln2_hi", "ln2_lo", "largest"):
        value = _exact(getattr(approx, name))
        _require(_significant_bits(value) <= p, f"{name} representable", f"{value}")
    for c in approx.coefficients:
        _require(_significant_bits(_exact(c)) <= p, "coefficient representable", f"{c}")
    base = _exact(approx.mantissa_base)
    # m - 1 exact (Sterbenz) needs m in [1/2, 2]; and [c, 2c) must hold 1.
    _require(Fraction(1, 2) <= base <= 1, "m - 1 exact (1/2 <= c <= 1)", f"{base}")
    widest = max(-approx.min_k, approx.max_k)
    _require(_significant_bits(_exact(approx.ln2_hi)) + widest.bit_length() <= p,
             "k*ln2_hi exact", f"{approx.ln2_hi}")
    shifter = _exact(approx.exponent_offset) - approx.exponent_bias
    # shifter + k + B is an integer in [2^(p-1), 2^p), where floats are spaced by 1.
    _require(2 ** (p - 1) <= shifter + approx.min_k + approx.exponent_bias and
             shifter + approx.max_k + approx.exponent_bias < 2**p, "exponent from the shifter", "")
    _require(_bits(shifter, approx.dtype) == approx.shifter_bits, "shifter bits", "")
    # The reduction, for every k, at the ends of [c, 2c) and at m = 1, wherever 2^k m is normal.
    ieee_bias = approx.exponent_bias - 1
    min_normal = Fraction(2) ** (1 - ieee_bias)
    below_twice = 2 * base - Fraction(2, 2**p)  # the float below 2c, in [1, 2)
    _require(_significant_bits(below_twice) <= p and below_twice < 2 * base, "float below 2c", "")
    for kk in range(approx.min_k, approx.max_k + 1):
        for m in (base, Fraction(1), below_twice):
            value = m * Fraction(2) ** kk
            if value < min_normal or value > _exact(approx.largest):
                continue
            exponent, reduced = _reduce_bits(approx, float(value))
            _require(Fraction(exponent) - _exact(approx.exponent_offset) == kk and
                     Fraction(reduced) == m, "bits give k and m", f"x = 2^{kk} * {float(m)}")
    _require(approx.min_k == 1 - ieee_bias and approx.max_k == ieee_bias + 1,
             "k covers the normal numbers", f"[{approx.min_k}, {approx.max_k}]")


def _atanh_upper(t: Fraction) -> Fraction:
    """atanh(t) <= t / (1 - t^2) for 0 <= t < 1 (the series, term by term below t^(2i+1))."""
    return t / (1 - t * t)


@cache
def verify_log_approximation(approx: LogApproximation) -> LogErrorBound:
    """Prove the relative error bound of ``approx``; raise ProofError naming the failing step."""
    verdicts = _check_identities(approx)
    _check_structure(approx)
    u = Fraction(1, 2**approx.precision)
    base = _exact(approx.mantissa_base)
    # s = (m - 1)/(m + 1) is increasing in m: its extremes are at m = c and m -> 2c.
    radius = max((1 - base) / (1 + base), (2 * base - 1) / (2 * base + 1))
    # fl(m + 1) and the division each round once: s_c = s (1 + d2) / (1 + d1).
    division = (1 + u) / (1 - u) - 1
    radius_c = radius * (1 + division)
    _require(radius_c < Fraction(1, 4), "reduced radius < 1/4", f"{float(radius_c)}")
    # atanh' = 1/(1 - t^2) <= 1/(1 - R^2) between s and s_c, and |atanh(s)| >= |s|.
    division_relative = division / (1 - radius_c**2)
    z_bound = radius_c**2 * (1 + u)  # computed z
    coefficients = tuple(_exact(c) for c in approx.coefficients)
    d = approx.degree
    # T(z) = sum_i 2 z^i/(2i+3): truncation, coefficient rounding, Horner, the last addition's
    # rounding, and z_c against z (T' <= 1/(1 - z) term by term).
    truncation = 2 * z_bound**d / (2 * d + 3) / (1 - z_bound)
    rounding = sum((abs(c - _tail_coefficient(i)) * z_bound**i for i, c in enumerate(coefficients)),
                   Fraction(0))
    horner = _horner_error(coefficients, z_bound, u)
    computed_poly = sum((c * z_bound**i for i, c in enumerate(coefficients)), Fraction(0))
    last_add = u * (computed_poly + horner)
    moved = u * z_bound / (1 - z_bound)
    tail_error = truncation + rounding + horner + last_add + moved
    tail_bound = Fraction(2, 3) / (1 - z_bound)  # T(z) <= (2/3) sum z^i
    # s z tail rounds twice more: |computed s z tail - s^3 T(s^2)| <= |s| * correction.
    correction = z_bound * (((1 + u) ** 3 - 1) * (tail_bound + tail_error) + tail_error)
    # fl(2s + w): relative to |2 atanh(s_c)| >= 2 |s_c|.
    polynomial_relative = correction / 2 + u * (1 + correction / 2)
    mantissa_relative = (1 + polynomial_relative) * (1 + division_relative) - 1
    # k != 0: |log m| <= L, |log x| >= |k| ln2 - L; the error is at most A |k| + B |log m|, so
    # relative to |log x| at most (A + B L)/(ln2 - L), the worst case being |k| = 1.
    ln2, ln2_error = _irrational("ln2")
    hi, lo = _exact(approx.ln2_hi), _exact(approx.ln2_lo)
    largest_log_m = 2 * _atanh_upper(radius)
    ln2_lower = ln2 - ln2_error
    _require(ln2_lower > largest_log_m, "|log m| < ln2", "")
    per_k = u * abs(lo) + u * abs(lo) * (1 + u) + abs(ln2 - hi - lo) + ln2_error
    per_log_m = u * (1 + mantissa_relative) + mantissa_relative
    exponent_relative = ((per_k + per_log_m * largest_log_m) / (ln2_lower - largest_log_m)) * (
        1 + u) + u
    relative = max(mantissa_relative, exponent_relative)  # k = 0: every other step is exact
    bound = LogErrorBound(
        reduced_radius=radius_c,
        division_relative=division_relative,
        polynomial_relative=polynomial_relative,
        mantissa_relative=mantissa_relative,
        exponent_relative=exponent_relative,
        relative=relative,
        verdicts=verdicts,
    )
    _require(relative <= approx.claimed_relative_error, "relative error within the claim",
             f"proven {float(relative):.3e} > claimed {float(approx.claimed_relative_error):.3e} "
             f"(degree {d})")
    return bound
