"""A vectorisable exp for arguments x <= 0: range reduction, a polynomial, a proven bound.

exp(x) = 2^k exp(r) with k the nearest integer to x*log2(e) and r = x - k ln2, so |r| <= ln2/2.
The nearest integer comes from adding and subtracting the shifter 1.5*2^(p-1) (p the precision):
under round-to-nearest the sum's last mantissa bit has weight 1, so the sum is k plus the
shifter, exactly; its low bits are k, which the kernel turns into the bits of 2^(k+K) by integer
arithmetic (no float-to-int conversion, which SSE2 lacks for doubles).  r is computed in two
steps with ln2 = ln2_hi + ln2_lo (Cody and Waite): k*ln2_hi and x - k*ln2_hi are exact.
exp(r) is P(r) = 1 + r Q(r) of degree n (see :func:`economized`: the Taylor series lowered with
Chebyshev polynomials, one degree less than the Taylor polynomial that meets the same bound).  The
kernel evaluates 2^-K P(r) by Estrin's scheme (:func:`estrin`), every coefficient carrying the
power of two 2^-K, and the result is (2^-K P(r)) * 2^(k+K): one product, exact for a normal
result, rounded once for a result below the smallest normal number, so those are the correctly
scaled subnormals; x below ``lower_clamp`` (also -inf) gives 0.  NaN passes through: the clamp's
comparison is false for NaN, and P(NaN) is NaN.  Carrying 2^-K in the coefficients rather than multiplying by it after
the scale saves one multiply an element (float32, one thread: 6% of the time at 1000 and 32000
classes, 2-3% at 4 and 10).

The error bound (:func:`verify_exp_approximation`) is a proof in exact rational arithmetic:
Lagrange's remainder of a longer Taylor polynomial, the Chebyshev terms the economization took
away (|T_k| <= 1 on its interval), the rounding of the coefficients, a running error bound of
Estrin's scheme in working precision (each operation rounded once, so it also holds when the
compiler fuses a multiply and an add; a product that falls below the smallest normal number adds
an absolute error of half the smallest subnormal), and the error of the reduced argument.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import TypeVar

import mpmath
import sympy as sp
from gradsmith.derive.check import ProofError, Verdict, check_equal

DTYPES = ("float32", "float64")
T = TypeVar("T")


@dataclass(frozen=True)
class _Format:
    precision: int  # significand bits, hidden bit included
    exponent_bias: int
    min_normal_exponent: int
    degree: int  # the lowest degree that meets the claimed bound
    # Horner steps after Estrin's (see estrin): in float64 three, the fewest that meet the claim
    # (5-10% faster than Horner's rule alone at C = 4 to 32000, one thread); in float32 all of
    # them, Horner's rule alone (the three there took 0-3% longer).
    horner_terms: int
    lower_clamp: int  # below this exp(x) is under half the smallest subnormal
    prescale_exponent: int  # K: 2^(k+K) stays normal for every k the clamp allows
    claimed_relative_error: Fraction  # in units of 2^-(p-1), the machine epsilon


_FORMATS = {
    "float32": _Format(24, 127, -126, 6, 6, -104, 32, Fraction(3, 2)),
    "float64": _Format(53, 1023, -1022, 11, 3, -746, 64, Fraction(3, 2)),
}

# The economization starts from the Taylor polynomial with this many more terms, on |r| <= this
# radius: above ln2/2 plus the reduction's slack, which the proof checks.
ECONOMIZED_TERMS = 8
ECONOMIZATION_RADIUS = Fraction(7, 20)

x = sp.Symbol("x", real=True)
clamped = sp.Symbol("clamped", real=True)
shifted = sp.Symbol("shifted", real=True)
k = sp.Symbol("k", real=True)
r_hi = sp.Symbol("r_hi", real=True)
r = sp.Symbol("r", real=True)
poly = sp.Symbol("poly", real=True)
scale = sp.Symbol("scale", positive=True)
result = sp.Symbol("result", real=True)


@dataclass(frozen=True)
class ExpApproximation:
    """exp(x) for x <= 0 in one precision, as printable steps plus the integer constants.

    ``steps`` are assignments evaluated in order.  Between ``poly`` and ``result`` the kernel
    computes ``scale`` = 2^(k+K) from the bits of ``shifted`` (unsigned ``bit_width`` integers,
    wrapping):  scale_bits = (bits(shifted) + scale_bits_offset) << mantissa_bits.  That is
    structure, not arithmetic on values, so it is not a SymPy expression.  The last step gives
    ``result``.  Every float constant is a ``sp.Float`` holding a value exactly representable in
    ``dtype``, so a C printer with the type's decimal digits reproduces it exactly.
    ``coefficients`` are P's, constant term first; ``polynomial_steps`` evaluate ``post_scale``
    (2^-K) times P by Estrin's scheme, the scaled coefficients printed; they are the steps from
    ``r`` to ``poly``.
    """

    dtype: str
    precision: int
    degree: int
    horner_terms: int
    lower_clamp: sp.Float
    log2e: sp.Float
    shifter: sp.Float
    ln2_hi: sp.Float
    ln2_lo: sp.Float
    post_scale: sp.Float  # 2^-K, carried by the polynomial's coefficients
    coefficients: tuple[sp.Float, ...]  # of P, unscaled
    polynomial_steps: tuple[tuple[sp.Symbol, sp.Expr], ...]  # 2^-K P(r), Estrin's scheme
    steps: tuple[tuple[sp.Symbol, sp.Expr], ...]
    bit_width: int
    mantissa_bits: int
    exponent_bias: int
    prescale_exponent: int
    shifter_bits: int
    scale_bits_offset: int
    max_abs_k: int
    underflow_absolute_error: Fraction  # half the smallest subnormal
    claimed_relative_error: Fraction


@dataclass(frozen=True)
class ExpErrorBound:
    """The proven bounds: result = exp(x) (1 + e) + d, |e| <= relative, |d| <= absolute."""

    reduced_radius: Fraction  # |r| <= this for every computed r
    polynomial_relative: Fraction  # Taylor remainder, economization and coefficient rounding
    evaluation_relative: Fraction  # rounding in Estrin's scheme
    reduction_relative: Fraction  # error of the computed r
    relative: Fraction
    absolute: Fraction
    verdicts: tuple[tuple[str, Verdict], ...]


def _round_to_precision(value: Fraction, precision: int) -> Fraction:
    """Round to the nearest number with ``precision`` significant bits, ties to even."""
    if value == 0:
        return value
    magnitude = abs(value)
    exponent = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    while Fraction(2) ** exponent > magnitude:
        exponent -= 1
    while Fraction(2) ** (exponent + 1) <= magnitude:
        exponent += 1
    unit = Fraction(2) ** (exponent - precision + 1)
    rounded = round(magnitude / unit) * unit
    return rounded if value > 0 else -rounded


def _significant_bits(value: Fraction) -> int:
    """Bits between the leading one and the last one of a dyadic rational."""
    numerator, denominator = abs(value.numerator), value.denominator
    if denominator & (denominator - 1):
        raise ProofError(f"{value} is not a dyadic rational")
    while numerator % 2 == 0:
        numerator //= 2
    return numerator.bit_length()


def _high_precision(value: mpmath.mpf) -> Fraction:
    mantissa, exponent = value.man_exp
    return Fraction(mantissa) * Fraction(2) ** exponent


_GUARD_BITS = 300


def _irrational(name: str) -> tuple[Fraction, Fraction]:
    """(value to 300 bits, bound on its error) of ln2 or log2(e)."""
    with mpmath.workprec(_GUARD_BITS + 20):
        value = mpmath.log(2) if name == "ln2" else 1 / mpmath.log(2)
        return _high_precision(value), Fraction(1, 2**_GUARD_BITS)


def _check_arguments(dtype: str, degree: object, formats: Mapping[str, object]) -> None:
    """A ValueError naming ``dtype`` or ``degree`` (None: the format's own) when it is bad."""
    if dtype not in formats:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if degree is not None and (not isinstance(degree, int) or degree < 1):
        raise ValueError(f"degree must be a positive integer, got {degree!r}")


def _float(value: Fraction) -> sp.Float:
    return sp.Float(float(value))  # exact: every value here is a double


def _bits(value: Fraction, dtype: str) -> int:
    if dtype == "float32":
        return struct.unpack("<I", struct.pack("<f", float(value)))[0]
    return struct.unpack("<Q", struct.pack("<d", float(value)))[0]


def _exact(value: sp.Float) -> Fraction:
    return Fraction(float(value))


def estrin(coefficients: Sequence[T], variable: T, multiply_add: Callable[[T, T, T], T],
           square: Callable[[T], T], horner_terms: int = 0) -> T:
    """sum c_i v^i (constant term first): c_h + c_(h+1) v + ... by Estrin's scheme (the pairs
    c_2i + c_(2i+1) v, then pairs of those with v^2, v^4, ... until one term is left; an odd one
    out moves up a level as it is), then the first h = ``horner_terms`` coefficients by Horner's
    rule.  The arithmetic is the caller's (``multiply_add(a, b, c)`` = a b + c, ``square(a)`` =
    a a), so one plan gives both the printed steps and the proof's error bound.

    Estrin's chain of dependent operations is about 2 log2(n) long where Horner's is n, for a few
    operations more; the kernels' exp loops wait on that chain more than on the arithmetic units.
    Horner's steps come last, where the sum is close to 1: there each rounding counts whole, and
    in Horner's rule only the last one does.  h = n - 1 is Horner's rule alone."""
    if not 0 <= horner_terms < len(coefficients):
        raise ValueError(f"horner_terms must be in [0, {len(coefficients) - 1}], got {horner_terms}")
    terms = [multiply_add(coefficients[i + 1], variable, coefficients[i])
             if i + 1 < len(coefficients) else coefficients[i]
             for i in range(horner_terms, len(coefficients), 2)]
    power = variable
    while len(terms) > 1:
        power = square(power)
        terms = [multiply_add(terms[i + 1], power, terms[i]) if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    value = terms[0]
    for c in reversed(coefficients[:horner_terms]):
        value = multiply_add(value, variable, c)
    return value


def estrin_steps(coefficients: Sequence[sp.Expr], variable: sp.Symbol, name: str,
                 horner_terms: int) -> tuple[tuple[sp.Symbol, sp.Expr], ...]:
    """:func:`estrin` as assignments, one operation each, so that printed code evaluates exactly
    the proven order: ``{name}_i_j`` holds the part with coefficients i to j (over v^i), powers
    are ``{v}2``, ``{v}4``, ...; the last assignment is ``name``."""
    steps: list[tuple[sp.Symbol, sp.Expr]] = []
    spans: dict[sp.Expr, tuple[int, int]] = {}
    exponents: dict[sp.Expr, int] = {variable: 1}

    def assign(label: str, expr: sp.Expr) -> sp.Symbol:
        symbol = sp.Symbol(label, real=True)
        steps.append((symbol, expr))
        return symbol

    def multiply_add(high: sp.Expr, power: sp.Expr, low: sp.Expr) -> sp.Symbol:
        first, last = spans[low][0], spans[high][1]
        symbol = assign(f"{name}_{first}_{last}", high * power + low)
        spans[symbol] = (first, last)
        return symbol

    def square(power: sp.Expr) -> sp.Symbol:
        symbol = assign(f"{variable}{2 * exponents[power]}", power * power)
        exponents[symbol] = 2 * exponents[power]
        return symbol

    terms = [sp.Dummy(f"c{i}") for i in range(len(coefficients))]
    spans.update({term: (i, i) for i, term in enumerate(terms)})
    last = estrin(terms, variable, multiply_add, square, horner_terms)
    constants = dict(zip(terms, coefficients, strict=True))
    steps = [(symbol, expr.xreplace(constants)) for symbol, expr in steps]
    if not steps or steps[-1][0] != last:  # a constant polynomial: nothing was assigned
        return ((sp.Symbol(name, real=True), constants.get(last, last)),)
    return (*steps[:-1], (sp.Symbol(name, real=True), steps[-1][1]))


def folded(steps: Sequence[tuple[sp.Symbol, sp.Expr]]) -> sp.Expr:
    """The last step's value as one expression in the steps' inputs (for symbolic checks)."""
    value: dict[sp.Symbol, sp.Expr] = {}
    for symbol, expr in steps:
        value[symbol] = expr.xreplace(value)
    return value[steps[-1][0]]


@cache
def exp_approximation(dtype: str, degree: int | None = None, horner_terms: int | None = None
                      ) -> ExpApproximation:
    """Build the approximation for ``dtype`` ("float32" or "float64"); check it with verify."""
    _check_arguments(dtype, degree, _FORMATS)
    fmt = _FORMATS[dtype]
    degree = fmt.degree if degree is None else degree
    horner_terms = min(fmt.horner_terms, degree) if horner_terms is None else horner_terms
    if not isinstance(horner_terms, int) or not 0 <= horner_terms <= degree:
        raise ValueError(f"horner_terms must be an integer in [0, degree], got {horner_terms!r}")
    p = fmt.precision
    unit = Fraction(1, 2**p)
    ln2, _ = _irrational("ln2")
    log2e = _round_to_precision(_irrational("log2e")[0], p)
    lower = Fraction(fmt.lower_clamp)
    max_abs_k = math.ceil(-lower * log2e * (1 + unit) + Fraction(1, 2))
    k_bits = max_abs_k.bit_length()
    ln2_hi = _round_to_precision(ln2, p - k_bits)  # k*ln2_hi exact for |k| <= max_abs_k
    ln2_lo = _round_to_precision(ln2 - ln2_hi, p)
    shifter = Fraction(3, 2) * 2 ** (p - 1)
    exact, _ = economized(degree)
    coefficients = tuple(_round_to_precision(c, p) for c in exact)
    printed = tuple(_float(c) for c in coefficients)
    post_scale = Fraction(1, 2**fmt.prescale_exponent)
    polynomial_steps = estrin_steps([_float(c * post_scale) for c in coefficients], r, poly.name,
                                    horner_terms)
    lower_f, log2e_f, shifter_f = _float(lower), _float(log2e), _float(shifter)
    hi_f, lo_f = _float(ln2_hi), _float(ln2_lo)
    post = _float(post_scale)
    steps = (
        (clamped, sp.Piecewise((lower_f, x < lower_f), (x, True))),
        (shifted, clamped * log2e_f + shifter_f),
        (k, shifted - shifter_f),
        (r_hi, clamped - hi_f * k),
        (r, r_hi - lo_f * k),
        *polynomial_steps,
        (result, poly * scale),
    )
    bit_width = 32 if dtype == "float32" else 64
    shifter_bits = _bits(shifter, dtype)
    offset = (fmt.exponent_bias + fmt.prescale_exponent - shifter_bits) % 2**bit_width
    return ExpApproximation(
        dtype=dtype,
        precision=p,
        degree=degree,
        horner_terms=horner_terms,
        lower_clamp=lower_f,
        log2e=log2e_f,
        shifter=shifter_f,
        ln2_hi=hi_f,
        ln2_lo=lo_f,
        post_scale=post,
        coefficients=printed,
        polynomial_steps=polynomial_steps,
        steps=steps,
        bit_width=bit_width,
        mantissa_bits=p - 1,
        exponent_bias=fmt.exponent_bias,
        prescale_exponent=fmt.prescale_exponent,
        shifter_bits=shifter_bits,
        scale_bits_offset=offset,
        max_abs_k=max_abs_k,
        underflow_absolute_error=Fraction(1, 2) ** (p - fmt.min_normal_exponent),
        claimed_relative_error=fmt.claimed_relative_error * Fraction(2) ** (1 - p),
    )


def _chebyshev(k: int) -> list[Fraction]:
    """The coefficients of the Chebyshev polynomial T_k, constant term first."""
    previous, current = [Fraction(1)], [Fraction(0), Fraction(1)]
    if k == 0:
        return previous
    for _ in range(k - 1):
        following = [Fraction(0)] + [2 * c for c in current]
        for i, c in enumerate(previous):
            following[i] -= c
        previous, current = current, following
    return current


@cache
def economized(degree: int) -> tuple[tuple[Fraction, ...], Fraction]:
    """P(r) = 1 + r Q(r) of ``degree``, in exact rationals, and the bound of its economization.

    Q starts as the Taylor polynomial of (e^r - 1)/r of degree ``degree - 1 + ECONOMIZED_TERMS``,
    and each leading term is removed by subtracting its multiple a T_k(r/R) (Lanczos), R =
    ECONOMIZATION_RADIUS.  As |T_k| <= 1 for |r| <= R, there |Q - Taylor| <= sum |a| and
    |P - Taylor| <= R sum |a|, the second value returned.  P(0) = 1 exactly, so the row maximum's
    term is exactly 1.
    """
    radius = ECONOMIZATION_RADIUS
    q = [Fraction(1, math.factorial(i + 1)) for i in range(degree + ECONOMIZED_TERMS)]
    removed = Fraction(0)
    for k in range(len(q) - 1, degree - 1, -1):
        chebyshev = _chebyshev(k)
        multiple = q[k] * radius**k / chebyshev[k]
        for i, c in enumerate(chebyshev):
            q[i] -= multiple * c / radius**i
        removed += abs(multiple)
        q.pop()
    return (Fraction(1), *q), radius * removed


# ---------------------------------------------------------------------------------------------
# The proof.


def _exp_neg_lower(radius: Fraction) -> Fraction:
    """A rational lower bound of exp(-radius) for 0 <= radius < 1 (alternating series)."""
    return sum((Fraction(-radius) ** i / math.factorial(i) for i in range(8)), Fraction(0))


def _require(condition: bool, step: str, detail: str) -> None:
    if not condition:
        raise ProofError(f"step '{step}' does not hold: {detail}")


def _check_identities(approx: ExpApproximation) -> tuple[tuple[str, Verdict], ...]:
    integer_k = sp.Symbol("k", integer=True)
    prescale = sp.Integer(approx.prescale_exponent)
    verdicts = [
        ("exp(x) = 2^k exp(x - k ln2)", check_equal(
            sp.exp(x), 2**integer_k * sp.exp(x - integer_k * sp.log(2)),
            step="range reduction exp(x) = 2^k exp(x - k ln2)")),
        ("2^k = 2^(k+K) 2^-K", check_equal(
            2**integer_k, 2 ** (integer_k + prescale) * sp.Rational(1, 2) ** prescale,
            step="scaling 2^k = 2^(k+K) 2^-K")),
    ]
    taylor = sum((sp.Rational(_exact(c)) * r**i for i, c in enumerate(approx.coefficients)),
                 sp.Integer(0))
    steps = approx.polynomial_steps
    printed = [symbol for symbol, _ in approx.steps]
    end = printed.index(poly) + 1 if printed.count(poly) == 1 else 0
    _require(steps[-1][0] == poly and approx.steps[end - len(steps):end] == steps,
             "Estrin form is the printed poly", "the steps that give poly are not the polynomial's")
    verdicts.append(("Estrin form = 2^-K coefficients", check_equal(
        folded(steps), sp.Rational(_exact(approx.post_scale)) * taylor,
        step="Estrin form of the polynomial")))
    # The error bound is that of estrin's plan: the printed steps must be that plan's.
    post_scale = _exact(approx.post_scale)
    planned = estrin_steps([_float(_exact(c) * post_scale) for c in approx.coefficients], r,
                           poly.name, approx.horner_terms)
    _require(steps == planned, "printed steps are the proven scheme",
             f"not Estrin's scheme with {approx.horner_terms} Horner steps")
    return tuple(verdicts)


def _check_structure(approx: ExpApproximation) -> None:
    p, unit = approx.precision, Fraction(1, 2**approx.precision)
    for name in ("lower_clamp", "log2e", "shifter", "ln2_hi", "ln2_lo", "post_scale"):
        value = _exact(getattr(approx, name))
        _require(_significant_bits(value) <= p, f"{name} representable", f"{value}")
    for c in approx.coefficients:
        _require(_significant_bits(_exact(c)) <= p, "coefficient representable", f"{c}")
    post_scale = _exact(approx.post_scale)
    _require(post_scale == Fraction(1, 2**approx.prescale_exponent), "post_scale = 2^-K",
             f"{approx.post_scale}")
    min_normal = Fraction(2) ** (1 - approx.exponent_bias)
    for c in approx.coefficients:
        # 2^-K c is then exact in the type: a power-of-two multiple that stays normal.
        _require(c == 0 or abs(_exact(c)) * post_scale >= min_normal, "scaled coefficient normal",
                 f"{c}")
    lower, log2e = _exact(approx.lower_clamp), _exact(approx.log2e)
    largest_t = -lower * log2e * (1 + unit)
    _require(largest_t + Fraction(1, 2) <= approx.max_abs_k, "|k| <= max_abs_k", f"{largest_t}")
    shifter = _exact(approx.shifter)
    # shifter +- (max_abs_k + 1) stays in [2^(p-1), 2^p), where the spacing of floats is 1,
    # so fl(t + shifter) = shifter + nearest integer of t, and subtracting it back is exact.
    _require(2 ** (p - 1) <= shifter - approx.max_abs_k - 1 and
             shifter + approx.max_abs_k + 1 < 2**p, "shifter rounds to integers", f"{shifter}")
    _require(_significant_bits(_exact(approx.ln2_hi)) + approx.max_abs_k.bit_length() <= p,
             "k*ln2_hi exact", f"{approx.ln2_hi}")
    offset, width, mantissa = approx.scale_bits_offset, approx.bit_width, approx.mantissa_bits
    for kk in range(-approx.max_abs_k, 1):
        bits = (approx.shifter_bits + kk + offset) % 2**width << mantissa
        pattern = struct.pack("<I" if width == 32 else "<Q", bits % 2**width)
        value = struct.unpack("<f" if width == 32 else "<d", pattern)[0]
        _require(value == 2.0 ** (kk + approx.prescale_exponent), "scale bits give 2^(k+K)",
                 f"k={kk} gives {value}")


def _reduction_error(approx: ExpApproximation) -> tuple[Fraction, Fraction]:
    """(radius of the computed r, bound on |computed r - (x - k ln2)|)."""
    p, unit = approx.precision, Fraction(1, 2**approx.precision)
    ln2, ln2_err = _irrational("ln2")
    log2e_true, log2e_err = _irrational("log2e")
    log2e, lower = _exact(approx.log2e), _exact(approx.lower_clamp)
    hi, lo = _exact(approx.ln2_hi), _exact(approx.ln2_lo)
    # t = fl(x log2e_float): |x log2(e) - t| <= |x| (|log2e - log2e_float| + u log2e_float).
    slack = -lower * (abs(log2e_true - log2e) + log2e_err + unit * log2e)
    exact_radius = ln2 * (Fraction(1, 2) + slack) + ln2_err
    split_error = abs(ln2 - hi - lo) + ln2_err
    kmax = approx.max_abs_k
    # x - k ln2_hi is exact: for k != 0, |x| >= ln2 (1/2 - slack) > 1/4, so x and k*ln2_hi are
    # multiples of 2^-(p+1), and their difference is below 1/2 = 2^-(p+1) * 2^p.
    _require(ln2 * (Fraction(1, 2) - slack) > Fraction(1, 4), "x - k ln2_hi exact (|x| > 1/4)", "")
    # ln2_hi in [1/2, 1) with m significant bits is a multiple of 2^-m, and so is k*ln2_hi.
    _require(Fraction(1, 2) <= hi < 1 and _significant_bits(hi) <= p + 1,
             "x - k ln2_hi exact (quantum of k ln2_hi)", f"{hi}")
    _require(exact_radius + kmax * abs(ln2 - hi) < Fraction(1, 2), "x - k ln2_hi exact (size)", "")
    lo_product = kmax * abs(lo)
    error = kmax * split_error + unit * lo_product + unit * (
        exact_radius + kmax * split_error + lo_product * (1 + unit))
    return exact_radius + error, error


def _horner_error(coefficients: tuple[Fraction, ...], radius: Fraction, unit: Fraction,
                  underflow: Fraction = Fraction(0)) -> Fraction:
    """Absolute error bound of Horner's rule for |r| <= radius, each operation rounded once,
    not counting the rounding of the last addition (a relative error of at most u itself).
    A product may also fall below the smallest normal number, an absolute error of at most
    ``underflow``; an addition whose result does so is exact."""
    bound, error = abs(coefficients[-1]), Fraction(0)
    for position, c in enumerate(reversed(coefficients[:-1])):
        before_add = radius * bound * (1 + unit) + abs(c) + underflow
        error = radius * error + unit * radius * bound + underflow
        if position < len(coefficients) - 2:
            error += unit * before_add
        bound = before_add * (1 + unit)
    return error


def _estrin_error(coefficients: tuple[Fraction, ...], radius: Fraction, unit: Fraction,
                  underflow: Fraction, horner_terms: int) -> Fraction:
    """Absolute error bound of :func:`estrin` for |r| <= radius, each operation rounded once,
    not counting the rounding of the last addition (a relative error of at most u itself).
    A product may also fall below the smallest normal number, an absolute error of at most
    ``underflow``; an addition whose result does so is exact.  A term is (bound on its exact
    value, bound on its error, the rounding of its own last addition)."""

    def multiply_add(high, power, low):
        (a, a_error, _), (b, b_error, _), (c, c_error, _) = high, power, low
        product_error = a_error * (b + b_error) + a * b_error
        product_rounding = unit * (a + a_error) * (b + b_error) + underflow
        before_add = product_error + product_rounding + c_error
        add_rounding = unit * (a * b + c + before_add)
        return a * b + c, before_add + add_rounding, add_rounding

    def square(power):
        a, a_error, _ = power
        return a * a, a_error * (2 * a + a_error) + unit * (a + a_error) ** 2 + underflow, 0

    terms = [(abs(c), Fraction(0), Fraction(0)) for c in coefficients]
    variable = (radius, Fraction(0), Fraction(0))
    _, error, last_rounding = estrin(terms, variable, multiply_add, square, horner_terms)
    return error - last_rounding


@cache
def verify_exp_approximation(approx: ExpApproximation) -> ExpErrorBound:
    """Prove the error bound of ``approx``; raise ProofError naming the step that fails."""
    verdicts = _check_identities(approx)
    _check_structure(approx)
    unit = Fraction(1, 2**approx.precision)
    radius, r_error = _reduction_error(approx)
    _require(radius < 1, "reduced radius < 1", f"{float(radius)}")
    exp_neg = _exp_neg_lower(radius)  # exp(-R) >= this, exp(R) <= 1/this
    n = approx.degree
    coefficients = tuple(_exact(c) for c in approx.coefficients)
    _require(radius <= ECONOMIZATION_RADIUS, "reduced radius within the economization's",
             f"{float(radius)}")
    exact, economization = economized(n)
    _require(len(coefficients) == len(exact), "degree of the coefficients", f"{len(coefficients)}")
    # Lagrange for the Taylor polynomial T_N the economization started from:
    # |exp(r) - T_N(r)| / exp(r) = exp(xi - r) |r|^(N+1)/(N+1)! <= exp(R) R^(N+1)/(N+1)!.
    taylor_degree = n + ECONOMIZED_TERMS
    remainder = radius ** (taylor_degree + 1) / math.factorial(taylor_degree + 1) / exp_neg
    rounding = sum((abs(c - e) * radius**i for i, (c, e) in enumerate(zip(coefficients, exact))),
                   Fraction(0))
    polynomial_relative = remainder + (economization + rounding) / exp_neg
    _require(polynomial_relative < Fraction(1, 2), "polynomial close to exp", "")
    post_scale = _exact(approx.post_scale)
    smallest_poly = exp_neg * (1 - polynomial_relative) * post_scale
    scaled = tuple(c * post_scale for c in coefficients)
    evaluation = _estrin_error(scaled, radius, unit, approx.underflow_absolute_error,
                               approx.horner_terms)
    evaluation_relative = (1 + evaluation / smallest_poly) * (1 + unit) - 1
    reduction_relative = r_error / (1 - r_error)  # exp(e) - 1 <= e / (1 - e) for 0 <= e < 1
    relative = (1 + polynomial_relative) * (1 + evaluation_relative) * (1 + reduction_relative) - 1
    bound = ExpErrorBound(
        reduced_radius=radius,
        polynomial_relative=polynomial_relative,
        evaluation_relative=evaluation_relative,
        reduction_relative=reduction_relative,
        relative=relative,
        absolute=approx.underflow_absolute_error,
        verdicts=verdicts,
    )
    _require(relative <= approx.claimed_relative_error, "relative error within the claim",
             f"proven {float(relative):.3e} > claimed {float(approx.claimed_relative_error):.3e} "
             f"(degree {n})")
    _check_underflow(approx, relative)
    return bound


def _check_underflow(approx: ExpApproximation, relative: Fraction) -> None:
    """At the clamp the result is below half the smallest subnormal, so it rounds to 0."""
    with mpmath.workprec(200):
        enclosure = mpmath.iv.exp(mpmath.iv.mpf(int(_exact(approx.lower_clamp))))
        upper = _high_precision(mpmath.mpf(enclosure.b))
    _require(upper * (1 + relative) < approx.underflow_absolute_error,
             "clamp gives 0", f"exp({approx.lower_clamp}) too large")
