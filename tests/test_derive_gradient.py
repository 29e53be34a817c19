"""dL/dz for symbolic C and for concrete C: the claims hold, wrong claims are rejected."""

from __future__ import annotations

import dataclasses

import pytest
import sympy as sp
from gradsmith.derive import concrete, gradient
from gradsmith.derive.check import ProofError, check_equal
from gradsmith.derive.notation import C, class_index, class_sum, i, j, k, p, softmax, t, y
from gradsmith.derive.steps import DerivationBuilder, recheck


def test_symbolic_claims_hold_with_their_results():
    general = gradient.gradient_general()
    assert general.result == p[i] * class_sum(y[k]) - y[i]
    assert [a.name for a in general.assumptions] == ["i is a class index"]
    assert gradient.gradient_sum_to_one().result == p[i] - y[i]
    assert "targets sum to one" in [a.name for a in gradient.gradient_sum_to_one().assumptions]
    assert gradient.gradient_index_target().result == p[i] - sp.KroneckerDelta(i, t)
    same, other = gradient.index_target_cases()
    assert same.result == p[t] - 1 and other.result == p[i]
    assert gradient.softmax_jacobian().result == p[j] * (sp.KroneckerDelta(i, j) - p[i])


def test_every_step_carries_rule_and_method():
    for derivation in gradient.symbolic_derivations():
        assert derivation.steps[0].verdict is None
        for step in derivation.steps[1:]:
            assert step.rule and step.verdict.method == "symbolic", (step.rule, step.verdict)


def test_derivative_is_sympys_piecewise_before_the_assumption():
    collapsed = gradient.gradient_general().steps[2].expr
    assert collapsed.has(sp.Piecewise)
    assert not gradient.gradient_general().steps[1].expr.has(sp.Piecewise)


def _general_builder() -> DerivationBuilder:
    from gradsmith.derive.notation import expand_notation

    start = gradient.gradient_general().steps[2].expr  # SymPy's collapsed derivative
    builder = DerivationBuilder("wrong claim", "dL/dz_i", start, class_symbol=C,
                                prepare=expand_notation, assumptions=[class_index(i)])
    return builder


def test_wrong_sign_is_rejected():
    with pytest.raises(ProofError, match="wrong claim"):
        _general_builder().then(sp.Piecewise((p[i] + y[i], i <= C - 1), (0, True)), "typo")


def test_p_minus_y_without_the_sum_to_one_assumption_is_rejected():
    builder = _general_builder()
    builder.then(p[i] * class_sum(y[k]) - y[i], "restriction", assumptions=[class_index(i)])
    with pytest.raises(ProofError, match="does not hold"):
        builder.then(p[i] - y[i], "forgot the assumption")


def test_corrupted_step_names_the_step():
    from gradsmith.derive.notation import expand_notation

    derivation = gradient.gradient_general()
    steps = list(derivation.steps)
    steps[3] = dataclasses.replace(steps[3], expr=steps[3].expr + y[i])
    corrupted = dataclasses.replace(derivation, steps=steps)
    with pytest.raises(ProofError, match=r"step 3 \(definition of p_i\)"):
        recheck(corrupted, prepare=expand_notation, class_symbol=C)


def test_numeric_check_fixes_the_class_index_before_expanding_sums():
    # p_i and p_0 only agree when i = 0; the check must sample i, not treat z[i] as free.
    with pytest.raises(ProofError):
        check_equal(softmax(i), softmax(sp.Integer(0)), step="index", class_symbol=C,
                    symbolic=False)
    verdict = check_equal(softmax(i), softmax(i) + 0 * y[i], step="same", class_symbol=C,
                          symbolic=False)
    assert verdict.method == "numeric"


@pytest.mark.parametrize("classes", [1, 2, 3, 5])
def test_concrete_claims_hold(classes):
    for derivation in concrete.concrete_derivations(classes):
        assert derivation.classes == classes
        assert derivation.method == "symbolic"


def test_concrete_p_minus_y_needs_the_assumption():
    general = concrete.gradient_general(3)
    builder = DerivationBuilder("no assumption", "grad", general.result, classes=3,
                                prepare=concrete._prepare(concrete.concrete_classes(3)))
    probs = sp.Matrix(concrete._probability_symbols(3))
    with pytest.raises(ProofError, match=r"no assumption \(C=3\), step 1"):
        builder.then(probs - sp.Matrix(concrete.concrete_classes(3).y), "forgot it")


def test_concrete_index_target_columns_are_p_minus_onehot():
    result = concrete.gradient_index_target(3).result
    probs = sp.Matrix(concrete._probability_symbols(3))
    assert result[:, 1] == probs - sp.Matrix([0, 1, 0])
