"""The vectorisable tanh: its error bound is proven, a wrong step or a narrower working type is
rejected, and the printed C function (compiled from generated/c, in a vectorised loop) stays
within the proven bound against mpmath, with tanh's own limits at +-inf, signed zeros and NaN."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from conftest import worst_relative_error
from gradsmith.derive.check import ProofError
from gradsmith.derive.fast_tanh import (
    DTYPES,
    e,
    magnitude,
    tanh_approximation,
    verify_tanh_approximation,
)

NUMPY_TYPE = {"float32": np.float32, "float64": np.float64}


@pytest.mark.parametrize("dtype", DTYPES)
def test_error_bound_is_proven(dtype):
    bound = verify_tanh_approximation(tanh_approximation(dtype))
    if dtype == "float32":
        # one rounding to float32, and less than 2^-48 from the float64 arithmetic
        assert Fraction(1, 2**24) < bound.relative <= Fraction(1, 2**24) + Fraction(1, 2**48)
    else:
        assert bound.relative <= 16 * Fraction(1, 2**53)
    assert {v.method for _, v in bound.verdicts} <= {"symbolic", "numeric"}


def test_float32_arithmetic_would_break_the_claim():
    narrow = dataclasses.replace(tanh_approximation("float32"), working_dtype="float32")
    with pytest.raises(ProofError, match="within the claim"):
        verify_tanh_approximation(narrow)


def test_a_wrong_step_is_rejected():
    approx = tanh_approximation("float64")
    steps = tuple((name, e / (e + 2) if name == magnitude else expr) for name, expr in approx.steps)
    with pytest.raises(ProofError, match="tanh"):
        verify_tanh_approximation(dataclasses.replace(approx, steps=steps))


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype"):
        tanh_approximation("float16")


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_c_against_mpmath_within_the_proven_bound(dtype, fast_function_loops):
    def run(values):
        return fast_function_loops("tanh", dtype, values)

    float_type = NUMPY_TYPE[dtype]
    tiny = np.finfo(float_type).smallest_subnormal
    magnitudes = np.concatenate([
        np.linspace(0, 12, 2001), np.logspace(-40, 1.5, 1001), [tiny, 0.25, 0.5, 0.55, 1.0, 20.0],
    ])
    inputs = np.concatenate([magnitudes, -magnitudes]).astype(float_type)
    outputs = run(inputs)
    bound = verify_tanh_approximation(tanh_approximation(dtype)).relative
    worst = worst_relative_error(mpmath.tanh, inputs, outputs)
    assert 0 < worst <= mpmath.mpf(bound.numerator) / mpmath.mpf(bound.denominator)
    assert np.all(np.diff(run(np.linspace(-30, 30, 200001))) >= 0), "not monotone on a grid"


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_c_at_the_limits(dtype, fast_function_loops):
    def run(values):
        return fast_function_loops("tanh", dtype, values)

    huge = np.finfo(NUMPY_TYPE[dtype]).max
    out = run([np.inf, -np.inf, huge, -huge, 1e4, -1e4, np.nan, 0.0, -0.0])
    assert list(out[:6]) == [1, -1, 1, -1, 1, -1]
    assert np.isnan(out[6])
    assert out[7] == 0 and out[8] == 0
