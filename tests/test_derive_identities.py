"""Stability identities, the options of cross_entropy, reductions and the linear classifier."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sympy as sp
from gradsmith.derive import linear, options, reductions, stability
from gradsmith.derive.check import ProofError
from gradsmith.derive.notation import class_sum, i, k, lse, p, y
from gradsmith.derive.steps import DerivationBuilder


@pytest.mark.parametrize("build", [
    stability.shift_invariance, stability.log_sum_exp_loss, stability.online_normalizer,
    stability.online_merge, stability.exp2_rewrite,
])
def test_stability_identities_hold(build):
    derivation = build()
    assert len(derivation.steps) >= 3
    for step in derivation.steps[1:]:  # a numeric check states its precision and points
        assert step.verdict.method == "symbolic" or re.fullmatch(
            r"mpmath \d+ digits, \d+ random points for C in \(.+\)", step.verdict.detail
        ), (step.rule, step.verdict)


def test_option_results_are_the_closed_forms():
    assert options.z_loss().result == p[i] * (1 + 2 * options.lam * lse) - y[i]
    assert options.label_smoothing().result == p[i] - options.smoothed(i)
    assert options.class_weights().result.has(options.w[options.t])
    softcap = options.softcapping().result
    assert softcap == (options.q[i] - y[i]) * (1 - sp.tanh(options.z[i] / options.cap) ** 2)
    weighted = options.weighted_label_smoothing()
    assert "t is a class index" in [a.name for a in weighted.assumptions]
    assert options.weighted_probability_targets().method == "symbolic"


def test_z_loss_without_the_factor_two_is_rejected():
    start = options.z_loss().steps[-2].expr  # p_i sum y - y_i + 2 lambda lse p_i
    from gradsmith.derive.notation import C, expand_notation

    builder = DerivationBuilder("z-loss typo", "dL/dz_i", start, class_symbol=C,
                                prepare=expand_notation)
    with pytest.raises(ProofError, match="z-loss typo"):
        builder.then(p[i] * class_sum(y[k]) - y[i] + options.lam * lse * p[i], "typo")


def test_reductions_hold_and_ignored_rows_get_zero():
    for derivation in reductions.reduction_derivations():
        assert derivation.method == "symbolic"
    mean = reductions.mean_with_ignore_index().result
    assert mean[1, :] == sp.zeros(1, reductions.CLASSES)
    none = reductions.none_with_grad_output().result
    assert none[1, :] == sp.zeros(1, reductions.CLASSES)


def test_linear_classifier_gradients():
    weights, bias, inputs = linear.single_sample()
    assert bias.result == linear._sample(None)[2] - linear._sample(None)[1]
    x, y_, p_ = linear._sample(None)
    assert weights.result == (p_ - y_) * x.T
    assert inputs.result == linear.W.T * (p_ - y_)
    assert linear.verify_batch_parameter_gradients().method == "symbolic"


def test_batch_parameter_gradients_evaluate_with_numpy():
    forms = linear.batch_parameter_gradients()
    assert set(forms) == {"dW", "db"}
    rng = np.random.default_rng(0)
    dz, x = rng.normal(size=(5, 3)), rng.normal(size=(5, 4))
    grad_w = sp.lambdify((linear.dZ, linear.X, linear.N), forms["dW"], "numpy")(dz, x, 5)
    grad_b = sp.lambdify((linear.dZ, linear.X, linear.N), forms["db"], "numpy")(dz, x, 5)
    np.testing.assert_allclose(grad_w, dz.T @ x)
    np.testing.assert_allclose(np.ravel(grad_b), dz.sum(axis=0))
