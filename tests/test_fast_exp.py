"""The vectorisable exp: its error bound is proven, a weaker polynomial is rejected, and the
SymPy expressions, evaluated in float32/float64 with NumPy, stay within the proven bound."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import sympy as sp
from gradsmith.derive.check import ProofError
from gradsmith.derive.fast_exp import (
    DTYPES,
    ECONOMIZATION_RADIUS,
    ECONOMIZED_TERMS,
    _estrin_error,
    _exact,
    _horner_error,
    economized,
    estrin,
    estrin_steps,
    exp_approximation,
    poly,
    r,
    result,
    scale,
    shifted,
    verify_exp_approximation,
)

NUMPY_TYPES = {"float32": (np.float32, np.uint32), "float64": (np.float64, np.uint64)}


def _numeric(expr: sp.Expr, dtype: str):
    """NumPy function of ``expr`` with every constant passed as an exact ``dtype`` scalar.

    lambdify alone prints Floats with 15 digits, which is not enough for a double."""
    floats = sorted(expr.atoms(sp.Float), key=sp.default_sort_key)
    constants = sp.symbols(f"const0:{len(floats)}", real=True)
    replaced = expr.xreplace(dict(zip(floats, constants, strict=True)))
    variables = sorted(replaced.free_symbols - set(constants), key=sp.default_sort_key)
    function = sp.lambdify(variables + list(constants), replaced, "numpy")
    values = [NUMPY_TYPES[dtype][0](float(f)) for f in floats]
    return lambda **inputs: function(*(inputs[v.name] for v in variables), *values)


def _run_steps(steps, env: dict, dtype: str) -> dict:
    """``env`` with each step's value, evaluated in ``dtype`` one step at a time."""
    float_type = NUMPY_TYPES[dtype][0]
    for symbol, expr in steps:
        env[symbol.name] = np.asarray(_numeric(expr, dtype)(**env), dtype=float_type)
    return env


def _polynomial(approx, grid: np.ndarray, steps=None) -> np.ndarray:
    """The printed polynomial (or ``steps`` in its place) at ``grid``, in working precision."""
    with np.errstate(under="ignore"):
        return _run_steps(steps or approx.polynomial_steps, {"r": grid}, approx.dtype)[poly.name]


def _replaced_polynomial(approx, steps):
    """``approx`` with ``steps`` printed in place of its polynomial's."""
    start = approx.steps.index(approx.polynomial_steps[0])
    end = start + len(approx.polynomial_steps)
    return dataclasses.replace(approx, polynomial_steps=tuple(steps),
                               steps=(*approx.steps[:start], *steps, *approx.steps[end:]))


def _evaluate(approx, inputs: np.ndarray) -> np.ndarray:
    """Run the steps in ``approx.dtype``; the bit manipulation for the scale is the template's."""
    float_type, uint_type = NUMPY_TYPES[approx.dtype]
    env = {"x": inputs.astype(float_type)}
    with np.errstate(all="ignore"):
        for symbol, expr in approx.steps:
            if symbol == result:
                bits = env[shifted.name].view(uint_type)
                bits = bits + uint_type(approx.scale_bits_offset)
                bits = bits << uint_type(approx.mantissa_bits)
                env[scale.name] = bits.view(float_type)
            value = _numeric(expr, approx.dtype)(**env)
            env[symbol.name] = np.asarray(value, dtype=float_type)
    assert env[result.name].dtype == float_type
    return env[result.name]


@pytest.mark.parametrize("dtype", DTYPES)
def test_error_bound_is_proven(dtype):
    approx = exp_approximation(dtype)
    bound = verify_exp_approximation(approx)
    assert bound.relative <= approx.claimed_relative_error
    assert bound.relative == (1 + bound.polynomial_relative) * (1 + bound.evaluation_relative) * (
        1 + bound.reduction_relative) - 1
    assert Fraction(1, 3) < bound.reduced_radius < Fraction(7, 20)  # ln2/2 plus a little
    steps = dict(bound.verdicts)
    assert {verdict.method for verdict in steps.values()} == {"symbolic"}
    assert set(steps) == {
        "exp(x) = 2^k exp(x - k ln2)", "2^k = 2^(k+K) 2^-K", "Estrin form = 2^-K coefficients"
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_too_low_degree_is_rejected(dtype):
    weaker = exp_approximation(dtype, degree=exp_approximation(dtype).degree - 1)
    with pytest.raises(ProofError, match="relative error within the claim"):
        verify_exp_approximation(weaker)


def test_fewer_horner_steps_are_rejected_in_float64():
    """float64 evaluates by Estrin's scheme all but the fewest Horner steps that meet the claim."""
    approx = exp_approximation("float64")
    assert 0 < approx.horner_terms < approx.degree
    fewer = exp_approximation("float64", horner_terms=approx.horner_terms - 1)
    with pytest.raises(ProofError, match="relative error within the claim"):
        verify_exp_approximation(fewer)


def test_float32_is_horners_rule():
    approx = exp_approximation("float32")
    assert approx.horner_terms == approx.degree
    assert [str(symbol) for symbol, _ in approx.polynomial_steps] == [
        f"poly_{i}_{approx.degree}" for i in range(approx.degree - 1, 0, -1)] + ["poly"]


@pytest.mark.parametrize("size", range(1, 14))
def test_estrin_evaluates_the_polynomial_exactly(size):
    """In exact arithmetic the scheme is the polynomial, for any number of coefficients and of
    Horner steps, and it uses each coefficient once."""
    coefficients = [Fraction(3 * i + 1, 7 + i) for i in range(size)]
    point = Fraction(-5, 11)
    for horner_terms in range(size):
        used = []

        def multiply_add(a, b, c, used=used):
            used.extend(i for i, known in enumerate(coefficients) for x in (a, c) if x is known)
            return a * b + c

        value = estrin(coefficients, point, multiply_add, lambda a: a * a, horner_terms)
        assert value == sum(c * point**i for i, c in enumerate(coefficients))
        assert sorted(used) == (list(range(size)) if size > 1 else [])


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_schemes_bound_with_only_horner_steps_is_horners_running_error(dtype):
    """Two implementations of the running error, one for Horner's rule alone: they agree."""
    approx = exp_approximation(dtype)
    unit = Fraction(1, 2**approx.precision)
    scaled = tuple(_exact(c) * _exact(approx.post_scale) for c in approx.coefficients)
    underflow = approx.underflow_absolute_error
    assert _estrin_error(scaled, ECONOMIZATION_RADIUS, unit, underflow, approx.degree) == \
        _horner_error(scaled, ECONOMIZATION_RADIUS, unit, underflow)
    assert _estrin_error(scaled, ECONOMIZATION_RADIUS, unit, underflow, 0) > \
        2 * _horner_error(scaled, ECONOMIZATION_RADIUS, unit, underflow)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("horner_terms", [0, 1, 3, 6])
def test_the_schemes_bound_covers_every_rounding_in_one_direction(dtype, horner_terms):
    """Each product and sum rounded up by a full unit (the worst rounding), at r = +-R where
    every term adds up: the error stays within the bound plus the last addition's rounding, and
    at +R it takes up most of it, so a bound that left out a term would be caught."""
    approx = exp_approximation(dtype)
    unit = Fraction(1, 2**approx.precision)
    scaled = [_exact(c) * _exact(approx.post_scale) for c in approx.coefficients]
    bound = _estrin_error(tuple(scaled), ECONOMIZATION_RADIUS, unit, Fraction(0), horner_terms)

    def rounded_up(a, b, c):
        return (a * b * (1 + unit) + c) * (1 + unit)

    for point in (ECONOMIZATION_RADIUS, -ECONOMIZATION_RADIUS, ECONOMIZATION_RADIUS / 3):
        exact = sum(c * point**i for i, c in enumerate(scaled))
        computed = estrin(scaled, point, rounded_up, lambda a: a * a * (1 + unit), horner_terms)
        assert abs(computed - exact) <= bound + unit * (abs(exact) + bound)
        if point > 0 and point == ECONOMIZATION_RADIUS:
            assert abs(computed - exact) > bound / 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_economization_stays_within_its_bound_and_keeps_exp0_exact(dtype):
    """|P - Taylor| on the interval, in exact rationals at 401 points, is at most the bound the
    proof uses, and not far below it (the bound is not vacuous); P(0) is 1."""
    degree = exp_approximation(dtype).degree
    coefficients, bound = economized(degree)
    taylor = [Fraction(1, math.factorial(i)) for i in range(degree + ECONOMIZED_TERMS + 1)]
    assert coefficients[0] == 1 and float(exp_approximation(dtype).coefficients[0]) == 1
    worst = Fraction(0)
    for step in range(-200, 201):
        point = ECONOMIZATION_RADIUS * Fraction(step, 200)
        value = sum(c * point**i for i, c in enumerate(coefficients))
        reference = sum(c * point**i for i, c in enumerate(taylor))
        worst = max(worst, abs(value - reference))
    assert worst <= bound
    assert worst > bound / 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_taylor_polynomial_of_the_same_degree_is_rejected(dtype):
    """The economization is what lets this degree meet the claim: the plain Taylor polynomial
    of the same degree, printed in its place, fails the proof."""
    approx = exp_approximation(dtype)
    taylor = tuple(sp.Float(float(np.array(1 / math.factorial(i), dtype=dtype)))
                   for i in range(approx.degree + 1))
    steps = estrin_steps([c * approx.post_scale for c in taylor], r, poly.name, approx.horner_terms)
    plain = dataclasses.replace(_replaced_polynomial(approx, steps), coefficients=taylor)
    with pytest.raises(ProofError, match="relative error within the claim"):
        verify_exp_approximation(plain)


def test_split_of_ln2_that_is_not_exact_is_rejected():
    approx = exp_approximation("float32")
    unsplit = dataclasses.replace(approx, ln2_hi=sp.Float(float(np.float32(np.log(2)))))
    with pytest.raises(ProofError, match=r"k\*ln2_hi exact"):
        verify_exp_approximation(unsplit)


@pytest.mark.parametrize("dtype", DTYPES)
def test_wrong_polynomial_is_rejected(dtype):
    approx = exp_approximation(dtype)
    *steps, (symbol, expr) = approx.polynomial_steps
    wrong = _replaced_polynomial(approx, (*steps, (symbol, expr + r**3 / 1000)))
    with pytest.raises(ProofError, match="Estrin form"):
        verify_exp_approximation(wrong)


def test_steps_in_another_order_are_rejected():
    """The same polynomial evaluated in another order than the one whose error was bounded."""
    approx = exp_approximation("float64")
    assert approx.horner_terms != approx.degree
    with pytest.raises(ProofError, match="printed steps are the proven scheme"):
        verify_exp_approximation(dataclasses.replace(approx, horner_terms=approx.degree))


def test_polynomial_steps_that_are_not_printed_are_rejected():
    approx = exp_approximation("float64")
    *steps, (symbol, expr) = approx.polynomial_steps
    unprinted = dataclasses.replace(approx, polynomial_steps=(*steps, (symbol, expr + r**3)))
    with pytest.raises(ProofError, match="Estrin form is the printed poly"):
        verify_exp_approximation(unprinted)


def test_unknown_dtype_and_degree_are_refused():
    with pytest.raises(ValueError, match="dtype"):
        exp_approximation("float16")
    with pytest.raises(ValueError, match="degree"):
        exp_approximation("float32", degree=0)
    with pytest.raises(ValueError, match="horner_terms"):
        exp_approximation("float32", horner_terms=7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_constants_are_exact_in_the_type(dtype):
    approx = exp_approximation(dtype)
    float_type = NUMPY_TYPES[dtype][0]
    for value in (approx.log2e, approx.ln2_hi, approx.ln2_lo, approx.shifter, approx.post_scale,
                  approx.lower_clamp, *approx.coefficients,
                  *(f for _, expr in approx.polynomial_steps for f in expr.atoms(sp.Float))):
        assert float(float_type(float(value))) == float(value)


@pytest.mark.parametrize("dtype", DTYPES)
def test_polynomial_in_working_precision_against_mpmath(dtype):
    approx = exp_approximation(dtype)
    bound = verify_exp_approximation(approx)
    radius = float(bound.reduced_radius)
    float_type = NUMPY_TYPES[dtype][0]
    grid = np.linspace(-radius, radius, 4001).astype(float_type)
    values = _polynomial(approx, grid) / float_type(approx.post_scale)
    assert values.dtype == float_type
    allowed = bound.polynomial_relative + bound.evaluation_relative
    with mpmath.workdps(40):
        worst = max(
            abs(mpmath.mpf(float(v)) / mpmath.exp(mpmath.mpf(float(g))) - 1)
            for g, v in zip(grid, values, strict=True)
        )
    assert worst <= mpmath.mpf(allowed.numerator) / allowed.denominator
    assert worst > 0  # the check compares rounded values, not the same numbers


@pytest.mark.parametrize("dtype", DTYPES)
def test_whole_approximation_against_reference(dtype):
    approx = exp_approximation(dtype)
    bound = verify_exp_approximation(approx)
    lower = float(approx.lower_clamp)
    inputs = np.concatenate([
        np.linspace(lower - 20, 0, 200001),
        -np.logspace(-30, 0, 2001),
        [lower, np.nextafter(lower, 0), -1e-45, -0.0, 0.0],
    ]).astype(NUMPY_TYPES[dtype][0])
    outputs = _evaluate(approx, inputs)
    with mpmath.workdps(40):
        reference = [mpmath.exp(mpmath.mpf(float(v))) for v in inputs[::7]]
        relative = mpmath.mpf(bound.relative.numerator) / bound.relative.denominator
        absolute = mpmath.mpf(bound.absolute.numerator) / bound.absolute.denominator
        for got, want in zip(outputs[::7], reference, strict=True):
            assert abs(mpmath.mpf(float(got)) - want) <= relative * want + absolute
    specials = _evaluate(approx, np.array([0.0, -0.0, -np.inf, np.nan, lower - 1]))
    assert specials[0] == 1 and specials[1] == 1
    assert specials[2] == 0 and specials[4] == 0
    assert np.isnan(specials[3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_coefficients_give_the_unscaled_values_times_the_power_of_two(dtype):
    """The printed scheme on the coefficients times 2^-K, in working precision, gives exactly
    2^-K times the same scheme on P's own coefficients: the multiply it saves changes no result
    bit, also for tiny and subnormal r, where a scaled product can underflow."""
    approx = exp_approximation(dtype)
    float_type = NUMPY_TYPES[dtype][0]
    tiny = np.finfo(float_type).smallest_subnormal
    grid = np.concatenate([np.linspace(-0.35, 0.35, 20001), -np.logspace(-40, -1, 2001),
                           np.logspace(-40, -1, 2001), [tiny, -tiny, 0.0]]).astype(float_type)
    unscaled = estrin_steps(approx.coefficients, r, poly.name, approx.horner_terms)
    scaled_values = _polynomial(approx, grid)
    unscaled_values = _polynomial(approx, grid, unscaled)
    assert np.array_equal(scaled_values / float_type(approx.post_scale), unscaled_values)
    assert not np.array_equal(scaled_values, unscaled_values)


@pytest.mark.parametrize("dtype", DTYPES)
def test_coefficients_without_the_power_of_two_are_rejected(dtype):
    approx = exp_approximation(dtype)
    unscaled = estrin_steps(approx.coefficients, r, poly.name, approx.horner_terms)
    with pytest.raises(ProofError, match="Estrin form"):
        verify_exp_approximation(_replaced_polynomial(approx, unscaled))
