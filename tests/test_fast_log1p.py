"""The vectorisable log1p: its error bound is proven, weaker variants are rejected, and the
printed C function (compiled from generated/c, in a vectorised loop) stays within the proven
bound against mpmath, on both sides of 1 + x rounding to 1 and of the limit."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import sympy as sp
from conftest import as_mpf, worst_relative_error
from gradsmith.derive.check import ProofError
from gradsmith.derive.fast_log1p import (
    DTYPES,
    log1p_approximation,
    one_plus,
    ratio,
    verify_log1p_approximation,
    x,
)

from tests.test_fast_exp import NUMPY_TYPES


def _inputs(dtype: str) -> np.ndarray:
    """Dense in [0, 64] (a row's other classes against its maximum), every binade from the
    smallest subnormal up, and the edges: 1 + x rounding to 1, u - 1 at the limit, the largest."""
    float_type = NUMPY_TYPES[dtype][0]
    info = np.finfo(float_type)
    rng = np.random.default_rng(11)
    unit = float_type(2.0 ** -np.finfo(float_type).nmant) / 2
    edges = [0.0, info.smallest_subnormal, info.tiny, info.max]
    for point in (unit, 2 * unit, 3 * unit, 0.5, 1.0, 2.0, float(log1p_approximation(dtype).limit)):
        point = float_type(point)
        edges += [point, np.nextafter(point, float_type(0)), np.nextafter(point, float_type(np.inf))]
    return np.concatenate([
        np.linspace(0, 64, 40001).astype(float_type),
        np.exp2(rng.uniform(np.log2(float(info.smallest_subnormal)), np.log2(float(info.max)), 8001)),
        np.array(edges, dtype=float_type),
    ]).astype(float_type)


def _allowed(dtype: str) -> mpmath.mpf:
    return as_mpf(verify_log1p_approximation(log1p_approximation(dtype)).relative)


@pytest.mark.parametrize("dtype", DTYPES)
def test_error_bound_is_proven(dtype):
    approx = log1p_approximation(dtype)
    bound = verify_log1p_approximation(approx)
    eps = Fraction(2) ** (1 - approx.precision)
    assert bound.relative <= approx.claimed_relative_error == 5 * eps
    # The fast log's 3 epsilons and three roundings, of which the ratio corrects 1 + x's.
    assert 3 * eps < bound.ratio_relative < Fraction(9, 2) * eps
    assert bound.rounds_to_one_relative < eps / 2 and bound.large_relative < bound.ratio_relative
    steps = dict(bound.verdicts)
    assert len(steps) == 5 and {verdict.method for verdict in steps.values()} == {"symbolic"}


def test_a_claim_below_the_proof_is_rejected():
    approx = log1p_approximation("float32")
    tighter = dataclasses.replace(approx, claimed_relative_error=Fraction(4, 2**23))
    with pytest.raises(ProofError, match="relative error within the claim"):
        verify_log1p_approximation(tighter)


def test_a_ratio_that_does_not_correct_the_rounding_is_rejected():
    approx = log1p_approximation("float32")
    steps = tuple((name, x / one_plus if name == ratio else expr) for name, expr in approx.steps)
    with pytest.raises(ProofError, match="ratio's form"):
        verify_log1p_approximation(dataclasses.replace(approx, steps=steps))


def test_a_limit_where_u_minus_1_rounds_is_rejected():
    approx = log1p_approximation("float32")
    with pytest.raises(ProofError, match="u - 1 exact"):
        verify_log1p_approximation(dataclasses.replace(approx, limit=sp.Float(2.0**24)))


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype"):
        log1p_approximation("float16")


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_c_against_mpmath_within_the_proven_bound(dtype, fast_function_loops):
    inputs = _inputs(dtype)
    outputs = fast_function_loops("log1p", dtype, inputs)
    worst = worst_relative_error(mpmath.log1p, inputs[::2], outputs[::2])
    assert 0 < worst <= _allowed(dtype)
    edges = inputs[-25:]
    assert worst_relative_error(mpmath.log1p, edges, outputs[-25:]) <= _allowed(dtype)
    specials = fast_function_loops("log1p", dtype, np.array([0.0, np.inf, np.nan]))
    assert specials[0] == 0 and specials[1] == np.inf and np.isnan(specials[2])
