"""The vectorisable expm1: its error bound is proven, a weaker polynomial is rejected, and the
steps, evaluated in float32/float64 with NumPy (the fast exp's own steps for exp), stay within
the proven relative bound against mpmath."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp
from gradsmith.derive.check import ProofError
from gradsmith.derive.fast_exp import exp_approximation
from gradsmith.derive.fast_expm1 import (
    DTYPES,
    expm1_approximation,
    poly,
    result,
    verify_expm1_approximation,
    via_exp,
)

from tests.test_fast_exp import NUMPY_TYPES, _evaluate, _numeric


def _evaluate_expm1(dtype: str, inputs: np.ndarray) -> np.ndarray:
    approx = expm1_approximation(dtype)
    float_type = NUMPY_TYPES[dtype][0]
    env = {"x": inputs.astype(float_type)}
    steps = dict(approx.steps)
    with np.errstate(all="ignore"):
        env[poly.name] = np.asarray(_numeric(steps[poly], dtype)(**env), dtype=float_type)
        exp_x = _evaluate(exp_approximation(dtype), env["x"])
        assert steps[via_exp] == sp.exp(sp.Symbol("x", real=True)) - 1
        env[via_exp.name] = (exp_x - float_type(1)).astype(float_type)
        value = np.where(env["x"] >= -float_type(float(approx.threshold)), env[poly.name],
                         env[via_exp.name])
    assert steps[result] == sp.Piecewise((poly, sp.Symbol("x", real=True) >= -approx.threshold),
                                         (via_exp, True))
    return value.astype(float_type)


@pytest.mark.parametrize("dtype", DTYPES)
def test_error_bound_is_proven(dtype):
    bound = verify_expm1_approximation(expm1_approximation(dtype))
    eps = 2.0 ** (1 - expm1_approximation(dtype).precision)
    assert bound.relative <= 3 * eps
    assert {v.method for _, v in bound.verdicts} <= {"symbolic", "numeric"}
    assert bound.polynomial_relative > 0 and bound.exp_branch_relative > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_weaker_polynomial_is_rejected(dtype):
    weaker = expm1_approximation(dtype, degree=expm1_approximation(dtype).degree - 3)
    with pytest.raises(ProofError, match="within the claim"):
        verify_expm1_approximation(weaker)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="dtype"):
        expm1_approximation("float16")
    with pytest.raises(ValueError, match="degree"):
        expm1_approximation("float32", degree=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_against_mpmath_within_the_proven_bound(dtype):
    approx = expm1_approximation(dtype)
    bound = verify_expm1_approximation(approx)
    inputs = np.concatenate([
        np.linspace(-30, 0.5, 20001),
        -np.logspace(-30, 0, 3001),
        np.logspace(-30, np.log10(0.5), 1001),
        [-0.5, np.nextafter(-0.5, 0), np.nextafter(-0.5, -1), -1e-45, -0.0, 0.0],
    ]).astype(NUMPY_TYPES[dtype][0])
    outputs = _evaluate_expm1(dtype, inputs)
    worst = mpmath.mpf(0)
    with mpmath.workdps(40):
        for got, x in zip(outputs[::3], inputs[::3], strict=True):
            want = mpmath.expm1(mpmath.mpf(float(x)))
            if want != 0:
                worst = max(worst, abs(mpmath.mpf(float(got)) / want - 1))
            else:
                assert got == 0
        allowed = mpmath.mpf(bound.relative.numerator) / bound.relative.denominator
    assert 0 < worst <= allowed
    specials = _evaluate_expm1(dtype, np.array([-np.inf, np.nan, -200.0]))
    assert specials[0] == -1 and specials[2] == -1
    assert np.isnan(specials[1])
