"""The vectorisable log: its error bound is proven, weaker variants are rejected, and both the
SymPy steps (evaluated in float32/float64 with NumPy) and the printed C function (compiled from
generated/c, in a vectorised loop) stay within the proven bound against mpmath."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import sympy as sp
from conftest import as_mpf, worst_relative_error
from gradsmith.derive.check import ProofError
from gradsmith.derive.fast_log import (
    DTYPES,
    exponent_shifted,
    log_approximation,
    mantissa,
    s,
    verify_log_approximation,
)

from tests.test_fast_exp import NUMPY_TYPES, _numeric


def _evaluate(approx, inputs: np.ndarray) -> np.ndarray:
    """Run the steps in ``approx.dtype``; the bit manipulation before them is the template's."""
    float_type, uint_type = NUMPY_TYPES[approx.dtype]
    env = {"x": inputs.astype(float_type)}
    with np.errstate(all="ignore"):
        t = env["x"].view(uint_type) + uint_type(approx.offset_bits)
        exponent = (t >> uint_type(approx.mantissa_bits)) + uint_type(approx.shifter_bits)
        reduced = (t & uint_type(approx.mantissa_mask)) + uint_type(approx.mantissa_base_bits)
        env[exponent_shifted.name] = exponent.view(float_type)
        env[mantissa.name] = reduced.view(float_type)
        for symbol, expr in approx.steps:
            value = _numeric(expr, approx.dtype)(**env)
            env[symbol.name] = np.asarray(value, dtype=float_type)
    return env["result"]


def _inputs(dtype: str) -> np.ndarray:
    """Dense in [1, 64] (the kernels' sums of exponentials), every binade, and the edges."""
    float_type = NUMPY_TYPES[dtype][0]
    info = np.finfo(float_type)
    rng = np.random.default_rng(7)
    base = float(log_approximation(dtype).mantissa_base)
    edges = []
    for point in (1.0, base, 2 * base, 2.0, 0.5):
        point = float_type(point)
        edges += [point, np.nextafter(point, float_type(0)), np.nextafter(point, float_type(np.inf))]
    edges += [info.tiny, np.nextafter(info.tiny, float_type(1)), info.max,
              np.nextafter(info.max, float_type(0))]
    return np.concatenate([
        np.linspace(1, 64, 40001).astype(float_type),
        np.exp2(rng.uniform(np.log2(float(info.tiny)), np.log2(float(info.max)), 8001)),
        np.array(edges, dtype=float_type),
    ]).astype(float_type)


def _worst_relative(inputs: np.ndarray, outputs: np.ndarray) -> mpmath.mpf:
    return worst_relative_error(mpmath.log, inputs, outputs)


def _allowed(dtype: str) -> mpmath.mpf:
    return as_mpf(verify_log_approximation(log_approximation(dtype)).relative)


@pytest.mark.parametrize("dtype", DTYPES)
def test_error_bound_is_proven(dtype):
    approx = log_approximation(dtype)
    bound = verify_log_approximation(approx)
    eps = 2.0 ** (1 - approx.precision)
    assert bound.relative <= approx.claimed_relative_error == Fraction(3, 2 ** (approx.precision - 1))
    assert 0.17 < bound.reduced_radius < 0.172  # (sqrt2 - 1)/(sqrt2 + 1) plus two roundings
    assert float(bound.relative) > eps  # the division and the final sums cost more than an ulp
    steps = dict(bound.verdicts)
    assert set(steps) == {"log(2^k m) = k log2 + log m", "log m = 2 atanh((m-1)/(m+1))",
                          "Taylor series of 2 atanh(s)", "Horner form = coefficients"}
    assert {verdict.method for verdict in steps.values()} <= {"symbolic", "numeric"}


@pytest.mark.parametrize("dtype", DTYPES)
def test_too_low_degree_is_rejected(dtype):
    weaker = log_approximation(dtype, degree=log_approximation(dtype).degree - 1)
    with pytest.raises(ProofError, match="relative error within the claim"):
        verify_log_approximation(weaker)


def test_wrong_polynomial_is_rejected():
    approx = log_approximation("float32")
    wrong = dataclasses.replace(approx, polynomial=approx.polynomial + sp.Symbol("z", real=True) ** 2 / 1000)
    with pytest.raises(ProofError, match="Horner form"):
        verify_log_approximation(wrong)


def test_split_of_ln2_that_is_not_exact_is_rejected():
    approx = log_approximation("float32")
    unsplit = dataclasses.replace(approx, ln2_hi=sp.Float(float(np.float32(np.log(2)))))
    with pytest.raises(ProofError, match=r"k\*ln2_hi exact"):
        verify_log_approximation(unsplit)


def test_wrong_bit_constant_is_rejected():
    approx = log_approximation("float64")
    shifted = dataclasses.replace(approx, offset_bits=approx.offset_bits + (1 << approx.mantissa_bits))
    with pytest.raises(ProofError, match="bits give k and m"):
        verify_log_approximation(shifted)


def test_unknown_dtype_and_degree_are_refused():
    with pytest.raises(ValueError, match="dtype"):
        log_approximation("float16")
    with pytest.raises(ValueError, match="degree"):
        log_approximation("float32", degree=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_constants_are_exact_in_the_type(dtype):
    approx = log_approximation(dtype)
    float_type = NUMPY_TYPES[dtype][0]
    for value in (approx.mantissa_base, approx.exponent_offset, approx.ln2_hi, approx.ln2_lo,
                  approx.largest, *approx.coefficients):
        assert float(float_type(float(value))) == float(value)
    assert float(approx.largest) == float(np.finfo(float_type).max)


def test_the_division_is_one_operation():
    """The proof counts one rounding for s = f/(m + 1): the step is a quotient, not a reciprocal."""
    approx = log_approximation("float32")
    expr = dict(approx.steps)[s]
    numerator, denominator = sp.fraction(expr)
    assert numerator == sp.Symbol("f", real=True) and denominator == mantissa + 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_steps_against_mpmath_within_the_proven_bound(dtype):
    approx = log_approximation(dtype)
    inputs = _inputs(dtype)
    outputs = _evaluate(approx, inputs)
    assert outputs.dtype == NUMPY_TYPES[dtype][0]
    worst = _worst_relative(inputs[::3], outputs[::3])
    assert 0 < worst <= _allowed(dtype)
    specials = _evaluate(approx, np.array([1.0, np.inf, np.nan, 2.0]))
    assert specials[0] == 0 and specials[1] == np.inf and np.isnan(specials[2])
    assert specials[3] == NUMPY_TYPES[dtype][0](np.log(2.0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_c_against_mpmath_within_the_proven_bound(dtype, fast_function_loops):
    float_type = NUMPY_TYPES[dtype][0]

    def run(values) -> np.ndarray:
        return fast_function_loops("log", dtype, values)

    inputs = _inputs(dtype)
    outputs = run(inputs)
    worst = _worst_relative(inputs[1::3], outputs[1::3])
    assert 0 < worst <= _allowed(dtype)
    # The same steps as NumPy's evaluation, up to contraction into fused multiply-adds.
    assert np.max(np.abs(outputs - _evaluate(log_approximation(dtype), inputs))
                  / np.abs(np.where(outputs == 0, 1, outputs))) <= 4 * np.finfo(float_type).eps
    specials = run(np.array([1.0, np.inf, np.nan]))
    assert specials[0] == 0 and specials[1] == np.inf and np.isnan(specials[2])
