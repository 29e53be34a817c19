"""The gradient from the stored exponential: holds for every variant, a wrong factor is refused."""

import pytest
import sympy as sp
from gradsmith.derive import kernel_spec as ks
from gradsmith.derive.check import ProofError
from sympy.codegen.cfunctions import expm1


@pytest.mark.parametrize("spec", ks.all_specs(), ids=lambda spec: spec.name)
def test_dlogit_from_stored_equals_dlogit(spec):
    verdict = ks.verify_stored_gradient(spec)
    assert verdict.method == "symbolic"
    assert ks.stored in spec.dlogit_from_stored.free_symbols
    assert ks.stored_scale in spec.dlogit_from_stored.free_symbols
    assert ks.shifted not in spec.dlogit_from_stored.free_symbols
    assert spec.dlogit_from_stored.atoms(sp.exp) == set()


@pytest.mark.parametrize(
    "wrong_scale",
    [
        sp.exp(-ks.stored_shifted - ks.log_sum_exp),  # max difference with the wrong sign
        sp.exp(ks.stored_shifted),  # the normalizer forgotten
        sp.exp(-ks.log_sum_exp),  # as if every chunk had been stored at the row maximum
        sp.exp(ks.stored_shifted - ks.log_sum_exp),  # without the softmax term's coefficient
    ],
)
def test_wrong_stored_scale_is_refused(wrong_scale):
    spec = ks.kernel_spec("index", True, False)
    with pytest.raises(ProofError, match="stored"):
        ks.verify_stored_gradient(spec, scale_value=wrong_scale)


def test_wrong_stored_gradient_is_refused():
    spec = ks.kernel_spec("probs", False, True)
    wrong = spec.dlogit_from_stored.xreplace({ks.stored: ks.stored * 2})
    with pytest.raises(ProofError, match="stored"):
        ks.verify_stored_gradient(spec, gradient=wrong)


def test_from_stored_needs_the_softmax_term():
    with pytest.raises(ValueError, match="does not occur"):
        ks.from_stored(ks.coef_prob * sp.exp(ks.shifted), sp.exp(ks.shifted - ks.log_sum_exp))


def test_verify_spec_includes_the_stored_gradient():
    names = [name for name, _ in ks.verify_spec(ks.kernel_spec("index", False, False))]
    assert "index: dlogit from stored" in names


@pytest.mark.parametrize("spec", ks.all_specs(), ids=lambda spec: spec.name)
def test_the_single_chunk_stored_scale_is_proven(spec):
    assert ks.verify_single_chunk_stored_scale(spec).method == "symbolic"
    assert f"{spec.name}: single-chunk stored scale" in dict(ks.verify_spec(spec))


@pytest.mark.parametrize("spec", [s for s in ks.all_specs() if s.target_kind == "index"],
                         ids=lambda spec: spec.name)
def test_the_target_gradient_from_the_others_sum_is_proven(spec):
    assert ks.verify_target_from_others(spec).method == "symbolic"
    assert f"{spec.name}: target gradient from the others' sum" in dict(ks.verify_spec(spec))
    assert spec.dlogit_target_from_others.atoms(expm1) == set()


@pytest.mark.parametrize("wrong", [
    ks.coef_prob * (-ks.others_sum / (ks.sum_exp + 1)) + ks.coef_rest,  # the target's term twice
    ks.coef_prob * (ks.others_sum / ks.sum_exp - 1) + ks.coef_rest,  # the sign of p_t - 1
    ks.coef_prob * (-ks.others_sum / ks.sum_exp),  # without coef_rest
])
def test_a_wrong_target_gradient_from_the_others_sum_is_refused(wrong):
    with pytest.raises(ProofError, match="target gradient from the others' sum"):
        ks.verify_target_from_others(ks.kernel_spec("index", True, False), wrong)


@pytest.mark.parametrize("wrong", [ks.others_sum, ks.others_sum + 2 * ks.target_term])
def test_a_wrong_sum_from_the_others_sum_is_refused(wrong):
    with pytest.raises(ProofError, match="target gradient from the others' sum"):
        ks.verify_target_from_others(ks.kernel_spec("index", False, True), total=wrong)


@pytest.mark.parametrize("wrong", [ks.coef_prob / (ks.sum_exp + 1), ks.coef_prob * ks.sum_exp,
                                   sp.exp(-ks.sum_exp), 1 / ks.sum_exp])
def test_a_wrong_single_chunk_stored_scale_is_refused(wrong):
    with pytest.raises(ProofError, match="single-chunk stored scale"):
        ks.verify_single_chunk_stored_scale(ks.kernel_spec("index", True, False), wrong)


@pytest.mark.parametrize("spec", ks.all_specs(), ids=lambda spec: spec.name)
def test_the_merge_of_two_partial_rows_is_proven(spec):
    assert ks.verify_online_merge(spec).method == "symbolic"
    assert f"{spec.name}: online merge" in dict(ks.verify_spec(spec))


@pytest.mark.parametrize(
    ("sum_exp", "shifted_sum"),
    [
        (ks.sum_exp * sp.exp(ks.new_max - ks.old_max), None),  # rescaled the wrong way
        (None, ks.shifted_sum + ks.weight_sum * (ks.new_max - ks.old_max)),
        (None, ks.shifted_sum),  # the shift of the linear sum forgotten
    ],
)
def test_a_wrong_merge_is_refused(sum_exp, shifted_sum):
    spec = ks.kernel_spec("probs", True, False)
    with pytest.raises(ProofError, match="merge"):
        ks.verify_online_merge(spec, merge_sum_exp=sum_exp, merge_shifted_sum=shifted_sum)


@pytest.mark.parametrize("spec", ks.all_specs(), ids=lambda spec: spec.name)
def test_the_split_of_the_sum_is_proven(spec):
    assert ks.verify_split_sum(spec).method == "symbolic"
    assert f"{spec.name}: split sum" in dict(ks.verify_spec(spec))
    assert spec.split_row_values[1][1].atoms(sp.log) == set()


def _wrong_split_values(spec, lse):
    return ((ks.top_excess, ks.top_count - 1), (ks.log_sum_exp, lse), *spec.split_row_values[2:])


@pytest.mark.parametrize(
    "wrong",
    [
        {"split_row_values": "count"},  # log1p(top_count + rest_sum): the top counted once too often
        {"split_row_values": "rest"},  # log1p(top_excess): the rest forgotten
        {"rescale_top_count": ks.top_count},  # the old maximum's elements kept as ones
        {"rescale_rest_sum": ks.rest_sum * sp.exp(ks.old_max - ks.new_max)},  # the ones dropped
        {"top_term": sp.Integer(1)},  # every element counted at the maximum
        {"top_term_unsplit": sp.Integer(1)},  # unsplit, yet counted at the maximum
        {"rest_term_unsplit": sp.Integer(0)},  # unsplit, its term dropped
        {"top_term_from_stored": sp.Integer(0)},  # split again, the ones dropped
        {"rest_term_from_stored": ks.stored},  # split again, the ones counted twice
    ],
    ids=lambda wrong: next(iter(wrong)) + ":" + str(next(iter(wrong.values()))),
)
def test_a_wrong_split_is_refused(wrong):
    import dataclasses

    from sympy.codegen.cfunctions import log1p

    spec = ks.kernel_spec("index", True, True)
    (field, value), = wrong.items()
    if field == "split_row_values":
        u = ks.top_count + ks.rest_sum if value == "count" else ks.top_excess
        split = _wrong_split_values(spec, log1p(u))
        with pytest.raises(ProofError, match="split row value"):
            ks.verify_split_sum(spec, split_row_values=split)
        return
    with pytest.raises(ProofError, match="split"):
        ks.verify_split_sum(dataclasses.replace(spec, **{field: value}))


@pytest.mark.parametrize("spec", ks.all_specs(), ids=lambda spec: spec.name)
def test_mean_z_loss_is_over_counted_rows(spec):
    assert ks.verify_mean_z_loss(spec).method == "symbolic"
    names = [name for name, _ in ks.verify_spec(spec)]
    assert f"{spec.name}: mean z-loss over counted rows" in names


def test_z_loss_divided_by_the_weights_is_refused():
    # The former rule (the z-term over sum w[t]) is what the check must reject.
    import dataclasses

    spec = dataclasses.replace(ks.kernel_spec("index", True, False),
                               mean_lse_square_scale=ks.lse_square_scale)
    with pytest.raises(ProofError, match="counted rows"):
        ks.verify_mean_z_loss(spec)


@pytest.mark.parametrize("spec", ks.all_specs(), ids=lambda spec: spec.name)
def test_linear_sums_are_unused_without_smoothing_only_for_index_targets(spec):
    # Index targets without smoothing: loss = w_t (lse - z_t).  Probability targets read
    # sum_j y_j and sum_j y_j z_j whatever the smoothing.
    assert ks.linear_sums_unused_without_smoothing(spec) == (spec.target_kind == "index")


def test_a_row_value_reading_the_linear_sums_unscaled_keeps_them():
    import dataclasses

    spec = ks.kernel_spec("index", False, False)
    (symbol, value), *rest = spec.row_values
    wrong = dataclasses.replace(spec, row_values=((symbol, value + ks.shifted_sum), *rest))
    assert not ks.linear_sums_unused_without_smoothing(wrong)


@pytest.mark.parametrize("spec", ks.all_specs(), ids=lambda spec: spec.name)
def test_the_gradient_from_the_transformed_logit_is_proven(spec):
    """The softcapped kernels keep s tanh(z/s) per element and read it back: the gradient and
    the shift from it read no raw logit and equal the spec's own."""
    assert ks.verify_transformed_gradient(spec).method == "symbolic"
    assert ks.logit not in spec.dlogit_from_transformed.free_symbols
    assert spec.dlogit_from_transformed.atoms(sp.tanh) == set()
    assert bool(spec.from_transformed_steps) == spec.softcapped
    assert "dlogit from the transformed logit" in " ".join(name for name, _ in ks.verify_spec(spec))


@pytest.mark.parametrize("wrong", [
    lambda d: d.xreplace({ks.squashed: 2 * ks.squashed}),  # tanh taken as transformed / (softcap/2)
    lambda d: d / (1 - ks.squashed**2),  # the chain rule's factor left out
    lambda d: d.xreplace({ks.squashed: sp.tanh(ks.logit / ks.softcap)}),  # reads the raw logit
])
def test_a_wrong_gradient_from_the_transformed_logit_is_refused(wrong):
    spec = ks.kernel_spec("index", True, True)
    with pytest.raises(ProofError, match="transformed logit"):
        ks.verify_transformed_gradient(spec, gradient=wrong(spec.dlogit_from_transformed))


@pytest.mark.parametrize("spec", ks.all_specs(), ids=lambda spec: spec.name)
def test_the_row_values_at_the_default_options_are_proven(spec):
    assert ks.verify_default_options(spec).method == "symbolic"
    values, gradients = ks.at_default_options(spec.row_values, *ks.default_option_gradients(spec))
    read = set().union(*(value.free_symbols for _, value in values),
                       *(gradient.free_symbols for gradient in gradients))
    assert not read & {ks.label_smoothing, ks.lse_square_scale}
    assert dict(values)[ks.zloss_slope] == 0


def test_verify_spec_includes_the_default_options():
    assert "index: row values at the default options" in dict(
        ks.verify_spec(ks.kernel_spec("index", False, False)))


@pytest.mark.parametrize(("name", "wrong"), [
    (ks.zloss_slope, ks.lse * ks.lse_square_scale),  # an option left in
    (ks.coef_prob, ks.grad_scale),  # the target's class weight dropped
    (ks.loss, ks.log_sum_exp - ks.target_shifted),  # likewise
    (ks.coef_rest, -ks.grad_scale * ks.target_weight),  # the target's share taken twice
])
def test_a_wrong_row_value_at_the_default_options_is_refused(name, wrong):
    spec = ks.kernel_spec("index", True, False)
    values, _ = ks.at_default_options(spec.row_values)
    wrong_values = tuple((symbol, wrong if symbol == name else value) for symbol, value in values)
    with pytest.raises(ProofError, match="at the default options"):
        ks.verify_default_options(spec, wrong_values)
