"""The kernel spec: the proven closed forms that the emitted kernels evaluate, one per variant.

A row of logits is processed in two sweeps.  The first keeps a running maximum, the sum of
exp(logit - max) rescaled whenever the maximum grows (the online normalizer), and linear sums
``A = sum_j a_j`` and ``B = sum_j a_j (logit_j - max)`` rescaled the same way.  The second
writes the gradient.  The C kernels split the sum of exponentials as ``top_count + rest_sum``:
the number of elements at the running maximum (each exp(0) = 1) and the sum of the others'
terms, so that log_sum_exp = log1p(top_count - 1 + rest_sum) keeps the digits of a sum close
to 1 (1 - p_t stays accurate as p_t -> 1, on any vector width).  Every expression below is
checked against SymPy's derivative of the loss definition (PyTorch's ``cross_entropy``) by
:func:`verify_spec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from itertools import product

import sympy as sp
from gradsmith.derive.check import ProofError, Verdict, check_equal, without_expm1
from gradsmith.derive.losses import cross_entropy
from gradsmith.derive.row_loss_definition import ConcreteRow
from sympy.codegen.cfunctions import expm1, log1p

TARGET_KINDS = ("index", "probs")

# Scalars of one element (class j) of the row being processed.
logit = sp.Symbol("logit", real=True)
weight = sp.Symbol("weight", real=True)
target_prob = sp.Symbol("target_prob", real=True)
shifted = sp.Symbol("shifted", real=True)
# Row state of the first sweep.
row_max = sp.Symbol("row_max", real=True)
old_max = sp.Symbol("old_max", real=True)
new_max = sp.Symbol("new_max", real=True)
sum_exp = sp.Symbol("sum_exp", positive=True)
weight_sum = sp.Symbol("weight_sum", real=True)
# The split of sum_exp (C kernels): elements at the running maximum counted, the others summed.
exp_term = sp.Symbol("exp_term", positive=True)
top_term = sp.Symbol("top_term", nonnegative=True, integer=True)
top_count = sp.Symbol("top_count", nonnegative=True, integer=True)
top_excess = sp.Symbol("top_excess", nonnegative=True, integer=True)
rest_sum = sp.Symbol("rest_sum", nonnegative=True)
# The sum of exp_term over the classes other than the target (index targets; the C kernels' short
# rows and the NumPy backend).
others_sum = sp.Symbol("others_sum", nonnegative=True)
target_term = sp.Symbol("target_term", positive=True)  # the target's exp_term
shifted_sum = sp.Symbol("shifted_sum", real=True)
# Row scalars known before the first sweep.
target_logit = sp.Symbol("target_logit", real=True)
target_weight = sp.Symbol("target_weight", real=True)
grad_scale = sp.Symbol("grad_scale", real=True)
# Call parameters.
num_classes = sp.Symbol("num_classes", positive=True, integer=True)
label_smoothing = sp.Symbol("label_smoothing", nonnegative=True)
lse_square_scale = sp.Symbol("lse_square_scale", nonnegative=True)
softcap = sp.Symbol("softcap", positive=True)
grad_output = sp.Symbol("grad_output", real=True)
denominator = sp.Symbol("denominator", positive=True)
counted_rows = sp.Symbol("counted_rows", positive=True, integer=True)
loss_total = sp.Symbol("loss_total", real=True)
# Row results of the first sweep, in the order they are computed.
log_sum_exp = sp.Symbol("log_sum_exp", real=True)
lse = sp.Symbol("lse", real=True)
target_shifted = sp.Symbol("target_shifted", real=True)
zloss_slope = sp.Symbol("zloss_slope", real=True)
loss = sp.Symbol("loss", real=True)
coef_prob = sp.Symbol("coef_prob", real=True)
coef_smooth = sp.Symbol("coef_smooth", real=True)
coef_rest = sp.Symbol("coef_rest", real=True)
dlogit = sp.Symbol("dlogit", real=True)
# The first sweep may keep exp(transform - stored_max) per element, stored_max being the running
# maximum when the element's chunk was summed; the gradient then needs no second exponential.
stored = sp.Symbol("stored", nonnegative=True)
stored_max = sp.Symbol("stored_max", real=True)
stored_shifted = sp.Symbol("stored_shifted", real=True)
stored_scale = sp.Symbol("stored_scale", positive=True)
# A kernel may keep each element's transformed logit (the softcapped one) instead of the raw
# logit, so that the sweeps after the first evaluate the transform's tanh no more.
transformed = sp.Symbol("transformed", real=True)
squashed = sp.Symbol("squashed", real=True)  # tanh(logit/softcap), read back as transformed/softcap


@dataclass(frozen=True)
class KernelSpec:
    """Everything a template needs for one variant, as SymPy expressions.

    ``transform`` maps a raw logit to the logit the softmax sees (identity, or softcapping).
    ``element_shifted`` is ``transform - row_max``.  The first sweep accumulates
    ``exp(shifted)`` into ``sum_exp`` and ``linear_coefficient`` into ``weight_sum`` and
    ``linear_coefficient * shifted`` into ``shifted_sum``; when the running maximum moves from
    ``old_max`` to ``new_max`` the accumulators are updated by ``rescale_sum_exp`` and
    ``rescale_shifted_sum``.  ``row_values`` are computed in order after the sweep;
    ``dlogit`` is each element's gradient and ``dlogit_target`` replaces it at the target
    class (index targets).  ``row_weight`` is the row's share of the "mean" denominator.
    ``mean_lse_square_scale`` is the z-loss scale a "mean" call gives the rows, from the
    denominator and the number of counted rows: the z-term is then a mean over counted rows,
    whatever the class weights (:func:`verify_mean_z_loss`).
    ``top_term`` and ``rest_term`` (in ``exp_term``, the element's exp(shifted)) are an
    element's shares of ``top_count`` and ``rest_sum``; a rescale sets them to ``rescale_top_count`` and
    ``rescale_rest_sum``.  Any shares that add up to exp_term give the same sums, so the split
    is a choice of rounding: ``top_term_unsplit`` and ``rest_term_unsplit`` take every element
    as the rest (no select per element), and
    ``top_term_from_stored`` and ``rest_term_from_stored`` split a stored exp_term again, at its
    value 1 (exp(0) = 1: the maximum's elements, and others whose term rounds to 1).
    ``split_sum_exp`` is sum_exp from the split and ``split_row_values``
    are ``row_values`` from it, log_sum_exp as a log1p (:func:`verify_split_sum`).
    ``dlogit_from_stored`` is ``dlogit`` written with the stored exponential ``stored`` =
    exp(transform - stored_max) times ``stored_scale``, whose value is ``stored_scale_value``
    in terms of ``stored_shifted`` = ``stored_shifted_value`` (one per chunk, not per element;
    the maxima are subtracted first, as for ``element_shifted``).  The scale carries the
    softmax term's coefficient ``coef_prob``: one multiply an element fewer.
    ``single_chunk_stored_scale`` is ``stored_scale_value`` for a row summed in one chunk
    (stored_max = row_max): coef_prob exp(-log(sum_exp)) = coef_prob/sum_exp, one division
    instead of an exp of a log (:func:`verify_single_chunk_stored_scale`).
    ``shifted_from_transformed`` and ``dlogit_from_transformed`` are ``element_shifted`` and
    ``dlogit`` written with the element's ``transformed`` logit instead of its raw logit, after
    the steps ``from_transformed_steps`` (the softcap's chain rule factor 1 - tanh^2 is
    1 - squashed^2 with squashed = transformed/softcap), checked by
    :func:`verify_transformed_gradient`.
    ``dlogit_target_from_others`` is ``dlogit_target`` written with ``others_sum``, the sum of
    exp_term over the other classes: p_t - 1 = -others_sum/sum_exp, no cancellation as p_t -> 1
    and no expm1 (:func:`verify_target_from_others`).  ``sum_exp_from_others`` is sum_exp from
    others_sum and the target's exp_term ``target_term``, for a kernel that sums the two apart.
    """

    name: str
    target_kind: str
    weighted: bool
    softcapped: bool
    transform: sp.Expr
    element_shifted: sp.Expr
    exp_term: sp.Expr
    linear_coefficient: sp.Expr
    rescale_sum_exp: sp.Expr
    rescale_shifted_sum: sp.Expr
    top_term: sp.Expr
    rest_term: sp.Expr
    top_term_unsplit: sp.Expr
    rest_term_unsplit: sp.Expr
    top_term_from_stored: sp.Expr
    rest_term_from_stored: sp.Expr
    rescale_top_count: sp.Expr
    rescale_rest_sum: sp.Expr
    split_sum_exp: sp.Expr
    split_row_values: tuple[tuple[sp.Symbol, sp.Expr], ...]
    merge_sum_exp: sp.Expr
    merge_shifted_sum: sp.Expr
    row_values: tuple[tuple[sp.Symbol, sp.Expr], ...]
    dlogit: sp.Expr
    dlogit_target: sp.Expr | None
    dlogit_target_from_others: sp.Expr | None
    sum_exp_from_others: sp.Expr | None
    row_weight: sp.Expr
    scale_mean: sp.Expr
    scale_sum: sp.Expr
    loss_mean: sp.Expr
    mean_lse_square_scale: sp.Expr
    stored_shifted_value: sp.Expr
    stored_scale_value: sp.Expr
    dlogit_from_stored: sp.Expr
    single_chunk_stored_scale: sp.Expr
    from_transformed_steps: tuple[tuple[sp.Symbol, sp.Expr], ...]
    shifted_from_transformed: sp.Expr
    dlogit_from_transformed: sp.Expr

    def expressions(self) -> dict[str, sp.Expr]:
        """Every expression of the spec by name (for hashing and for tests)."""
        named = {
            "transform": self.transform,
            "element_shifted": self.element_shifted,
            "exp_term": self.exp_term,
            "linear_coefficient": self.linear_coefficient,
            "rescale_sum_exp": self.rescale_sum_exp,
            "rescale_shifted_sum": self.rescale_shifted_sum,
            "top_term": self.top_term,
            "rest_term": self.rest_term,
            "top_term_unsplit": self.top_term_unsplit,
            "rest_term_unsplit": self.rest_term_unsplit,
            "top_term_from_stored": self.top_term_from_stored,
            "rest_term_from_stored": self.rest_term_from_stored,
            "rescale_top_count": self.rescale_top_count,
            "rescale_rest_sum": self.rescale_rest_sum,
            "split_sum_exp": self.split_sum_exp,
            "merge_sum_exp": self.merge_sum_exp,
            "merge_shifted_sum": self.merge_shifted_sum,
            "dlogit": self.dlogit,
            "row_weight": self.row_weight,
            "scale_mean": self.scale_mean,
            "scale_sum": self.scale_sum,
            "loss_mean": self.loss_mean,
            "mean_lse_square_scale": self.mean_lse_square_scale,
            "stored_shifted_value": self.stored_shifted_value,
            "stored_scale_value": self.stored_scale_value,
            "dlogit_from_stored": self.dlogit_from_stored,
            "single_chunk_stored_scale": self.single_chunk_stored_scale,
            **{f"from_transformed:{symbol}": expr for symbol, expr in self.from_transformed_steps},
            "shifted_from_transformed": self.shifted_from_transformed,
            "dlogit_from_transformed": self.dlogit_from_transformed,
        }
        named.update({f"row:{symbol}": expr for symbol, expr in self.row_values})
        named.update({f"split_row:{symbol}": expr for symbol, expr in self.split_row_values})
        if self.dlogit_target is not None:
            named["dlogit_target"] = self.dlogit_target
            named["dlogit_target_from_others"] = self.dlogit_target_from_others
            named["sum_exp_from_others"] = self.sum_exp_from_others
        return named


def variant_name(target_kind: str, weighted: bool, softcapped: bool) -> str:
    return target_kind + ("_weighted" if weighted else "") + ("_softcap" if softcapped else "")


def _transform(softcapped: bool) -> sp.Expr:
    return softcap * sp.tanh(logit / softcap) if softcapped else logit


def smoothed_target(prob: sp.Expr, classes: sp.Expr = num_classes) -> sp.Expr:
    """PyTorch's label smoothing of a probability target: (1 - eps) y + eps / C."""
    return cross_entropy.smoothed_target(prob, classes, label_smoothing)


@cache
def kernel_spec(target_kind: str, weighted: bool, softcapped: bool) -> KernelSpec:
    """Build the spec of one variant (checked separately by :func:`verify_spec`)."""
    if target_kind not in TARGET_KINDS:
        raise ValueError(f"target_kind must be one of {TARGET_KINDS}, got {target_kind!r}")
    transform = _transform(softcapped)
    chain = sp.diff(transform, logit)  # d(transformed logit)/d(logit), by the chain rule
    class_weight = weight if weighted else sp.Integer(1)
    shifted_of_element = transform - row_max
    softmax_term = sp.exp(shifted - log_sum_exp)
    if target_kind == "index":
        linear_coefficient = class_weight
        row_values = (
            (log_sum_exp, sp.log(sum_exp)),
            (lse, row_max + log_sum_exp),
            (target_shifted, transform.subs(logit, target_logit) - row_max),
            # lambda*lse first, so that lambda = 0 gives 0 even where lse*lse overflows.
            (zloss_slope, lse_square_scale * lse),
            (
                loss,
                (1 - label_smoothing) * target_weight * (log_sum_exp - target_shifted)
                + label_smoothing / num_classes * (weight_sum * log_sum_exp - shifted_sum)
                + zloss_slope * lse,
            ),
            (
                coef_prob,
                grad_scale
                * (
                    (1 - label_smoothing) * target_weight
                    + label_smoothing / num_classes * weight_sum
                    + 2 * zloss_slope
                ),
            ),
            (coef_smooth, grad_scale * label_smoothing / num_classes),
            # coef_prob - coef_smooth target_weight - coef_target, with the cancellation done
            # symbolically: exactly 0 without smoothing and z-loss.
            (
                coef_rest,
                grad_scale
                * (
                    label_smoothing / num_classes * (weight_sum - target_weight)
                    + 2 * zloss_slope
                ),
            ),
        )
        dlogit_expr = (coef_prob * softmax_term - coef_smooth * class_weight) * chain
        target_chain = chain.subs(logit, target_logit)
        # coef_prob p_t - coef_smooth w_t - grad_scale (1 - eps) w_t written as
        # coef_prob (p_t - 1) + coef_rest with p_t - 1 = expm1(log p_t): no cancellation as
        # p_t -> 1 (the confident case), checked by verify_spec.
        dlogit_target = (
            coef_prob * expm1(target_shifted - log_sum_exp) + coef_rest
        ) * target_chain
        dlogit_target_from_others = (coef_prob * (-others_sum / sum_exp) + coef_rest) * target_chain
        sum_exp_from_others = others_sum + target_term
        row_weight = target_weight
    else:
        linear_coefficient = class_weight * smoothed_target(target_prob)
        row_values = (
            (log_sum_exp, sp.log(sum_exp)),
            (lse, row_max + log_sum_exp),
            (zloss_slope, lse_square_scale * lse),
            (loss, weight_sum * log_sum_exp - shifted_sum + zloss_slope * lse),
            (coef_prob, grad_scale * (weight_sum + 2 * zloss_slope)),
        )
        dlogit_expr = (coef_prob * softmax_term - grad_scale * linear_coefficient) * chain
        dlogit_target = dlogit_target_from_others = sum_exp_from_others = None
        row_weight = sp.Integer(1)
    rescale_sum_exp = sum_exp * sp.exp(old_max - new_max)
    split_sum_exp = top_count + rest_sum
    at_max = sp.Eq(shifted, 0)
    return KernelSpec(
        name=variant_name(target_kind, weighted, softcapped),
        target_kind=target_kind,
        weighted=weighted,
        softcapped=softcapped,
        transform=transform,
        element_shifted=shifted_of_element,
        exp_term=sp.exp(shifted),
        linear_coefficient=linear_coefficient,
        rescale_sum_exp=rescale_sum_exp,
        rescale_shifted_sum=shifted_sum + weight_sum * (old_max - new_max),
        top_term=sp.Piecewise((1, at_max), (0, True)),
        rest_term=sp.Piecewise((exp_term, sp.Ne(shifted, 0)), (0, True)),
        top_term_unsplit=sp.Integer(0),
        rest_term_unsplit=exp_term,
        top_term_from_stored=sp.Piecewise((1, sp.Eq(stored, 1)), (0, True)),
        rest_term_from_stored=sp.Piecewise((stored, sp.Ne(stored, 1)), (0, True)),
        # The old maximum's elements are no longer at the maximum: all of the sum is the rest.
        rescale_top_count=sp.Integer(0),
        rescale_rest_sum=rescale_sum_exp.xreplace({sum_exp: split_sum_exp}),
        split_sum_exp=split_sum_exp,
        split_row_values=_split(row_values),
        merge_sum_exp=rescale_sum_exp,
        merge_shifted_sum=shifted_sum + weight_sum * (old_max - new_max),
        row_values=row_values,
        dlogit=dlogit_expr,
        dlogit_target=dlogit_target,
        dlogit_target_from_others=dlogit_target_from_others,
        sum_exp_from_others=sum_exp_from_others,
        row_weight=row_weight,
        scale_mean=grad_output / denominator,
        scale_sum=grad_output,
        loss_mean=loss_total / denominator,
        # Row losses carry lambda D / K lse^2: divided by D, the z-term is lambda sum lse^2 / K.
        mean_lse_square_scale=lse_square_scale * denominator / counted_rows,
        stored_shifted_value=stored_max - row_max,
        stored_scale_value=coef_prob * sp.exp(stored_shifted - log_sum_exp),
        dlogit_from_stored=from_stored(dlogit_expr, coef_prob * softmax_term),
        single_chunk_stored_scale=coef_prob / sum_exp,
        from_transformed_steps=((squashed, transformed / softcap),) if softcapped else (),
        shifted_from_transformed=from_transformed(shifted_of_element, softcapped),
        dlogit_from_transformed=from_transformed(dlogit_expr, softcapped),
    )


def _split(row_values: tuple[tuple[sp.Symbol, sp.Expr], ...]) -> tuple[tuple[sp.Symbol, sp.Expr], ...]:
    """``row_values`` with log_sum_exp = log(sum_exp) taken from the split as a log1p of
    top_excess + rest_sum: top_excess = top_count - 1 is an exact integer, computed first, so
    a sum close to 1 keeps its digits."""
    (first, value), *rest = row_values
    if (first, value) != (log_sum_exp, sp.log(sum_exp)):
        raise ValueError(f"the first row value must be log_sum_exp = log(sum_exp), got {first} = {value}")
    return ((top_excess, top_count - 1), (log_sum_exp, log1p(top_excess + rest_sum)), *rest)


def linear_sums_unused_without_smoothing(spec: KernelSpec) -> bool:
    """True when, at label_smoothing = 0, nothing evaluated after the first sweep (row values,
    the per-element and the target's gradient) reads the linear sums weight_sum and
    shifted_sum: a kernel may then leave them at 0 instead of accumulating them."""
    sums = {weight_sum, shifted_sum}
    after_sweep = [expr for _, expr in spec.row_values + spec.split_row_values]
    after_sweep += [spec.dlogit, spec.dlogit_from_stored]
    if spec.dlogit_target is not None:
        after_sweep.append(spec.dlogit_target)
    return all(not (expr.subs(label_smoothing, 0).free_symbols & sums) for expr in after_sweep)


# PyTorch's defaults for the two options a row's tail reads: no label smoothing, no z-loss.
DEFAULT_OPTIONS = {label_smoothing: 0, lse_square_scale: 0}


def at_default_options(
    row_values: tuple[tuple[sp.Symbol, sp.Expr], ...], *exprs: sp.Expr
) -> tuple[tuple[tuple[sp.Symbol, sp.Expr], ...], tuple[sp.Expr, ...]]:
    """``row_values`` (computed in order) and ``exprs`` at :data:`DEFAULT_OPTIONS`: each value
    evaluated there, and those that become constants (zloss_slope, coef_smooth, ...) put into
    the later values and into ``exprs``.  An evaluation at a point, not a rewrite: a kernel may
    compute these instead wherever both options are 0 at run time (checked by
    :func:`verify_default_options`)."""
    constants: dict[sp.Symbol, sp.Expr] = {}
    values = []
    for symbol, expr in row_values:
        value = expr.subs(DEFAULT_OPTIONS).xreplace(constants)
        if value.is_number:
            constants[symbol] = value
        values.append((symbol, value))
    return tuple(values), tuple(expr.subs(DEFAULT_OPTIONS).xreplace(constants) for expr in exprs)


def default_option_gradients(spec: KernelSpec) -> tuple[sp.Expr, ...]:
    """The gradients read after the row values, in the order :func:`verify_default_options`
    checks them at the defaults: dlogit, dlogit_from_stored, dlogit_from_transformed, and for
    index targets dlogit_target_from_others."""
    gradients = (spec.dlogit, spec.dlogit_from_stored, spec.dlogit_from_transformed)
    return gradients + ((spec.dlogit_target_from_others,) if spec.target_kind == "index" else ())


def from_stored(gradient: sp.Expr, scaled_softmax: sp.Expr) -> sp.Expr:
    """``gradient`` with its term ``scaled_softmax`` = coef exp(shifted - log_sum_exp) written
    as stored * stored_scale.

    coef exp(shifted - log_sum_exp) = exp(transform - stored_max) coef exp(stored_max - row_max
    - log_sum_exp) since shifted = transform - row_max; checked by :func:`verify_stored_gradient`.
    """
    if not any(node == scaled_softmax for node in sp.preorder_traversal(gradient)):
        raise ValueError(f"{scaled_softmax} does not occur in the gradient {gradient}")
    return gradient.xreplace({scaled_softmax: stored * stored_scale})


def from_transformed(expr: sp.Expr, softcapped: bool) -> sp.Expr:
    """``expr`` with the element's logit read through ``transformed``: with softcapping,
    transformed = softcap tanh(logit/softcap), so the transform is ``transformed`` and its tanh
    is squashed = transformed/softcap (a ratio of two numbers of the same size, which neither
    underflows nor overflows for any softcap); the logit itself otherwise.  Checked by
    :func:`verify_transformed_gradient`."""
    if softcapped:
        return expr.xreplace({sp.tanh(logit / softcap): squashed}).xreplace(
            {softcap * squashed: transformed})
    return expr.xreplace({logit: transformed})


def all_specs() -> tuple[KernelSpec, ...]:
    return tuple(
        kernel_spec(kind, weighted, softcapped)
        for kind, weighted, softcapped in product(TARGET_KINDS, (False, True), (False, True))
    )


# ---------------------------------------------------------------------------------------------
# Verification against the definition, for a small concrete number of classes.


def _definition_loss(spec: KernelSpec, z, w, y, target: int | None) -> sp.Expr:
    """PyTorch's per-row cross_entropy with every option: the cross-entropy loss module's."""
    transformed = [spec.transform.subs(logit, zj) for zj in z]
    row = ConcreteRow(transformed, alpha=w, y=y, t=target)
    return cross_entropy.loss(row, label_smoothing=label_smoothing,
                              lse_square_scale=lse_square_scale,
                              probabilities=spec.target_kind == "probs")


def _row_state(spec: KernelSpec, z, w, y, target: int | None, pivot: sp.Symbol) -> dict:
    """Values of the row symbols in terms of the definition, for any pivot (the running max)."""
    classes = len(z)
    transformed = [spec.transform.subs(logit, zj) for zj in z]
    coefficients = [
        spec.linear_coefficient.subs({weight: wk, target_prob: yk, num_classes: classes})
        for wk, yk in zip(w, y, strict=True)
    ]
    state = {
        row_max: pivot,
        sum_exp: sp.Add(*[sp.exp(t - pivot) for t in transformed]),
        weight_sum: sp.Add(*coefficients),
        shifted_sum: sp.Add(*[a * (t - pivot) for a, t in zip(coefficients, transformed, strict=True)]),
        num_classes: classes,
    }
    if target is not None:
        state.update({target_logit: z[target], target_weight: w[target]})
    values = {}
    for symbol, expr in spec.row_values:
        values[symbol] = expr.subs(values).subs(state)
    return {**state, **values}


def verify_spec(spec: KernelSpec, classes: int = 3, target: int = 1) -> list[tuple[str, Verdict]]:
    """Check the spec's loss and gradient against SymPy's derivative of the definition.

    Checked for one concrete C with every option symbolic, at a free pivot standing for the
    row maximum (shift invariance makes any pivot valid), numerically at 40 digits where
    SymPy cannot decide it.  Raises ProofError naming the failing step.
    """
    z = sp.symbols(f"z_0:{classes}", real=True)
    w = sp.symbols(f"w_0:{classes}", positive=True) if spec.weighted else (sp.Integer(1),) * classes
    y = sp.symbols(f"y_0:{classes}", nonnegative=True) if spec.target_kind == "probs" else (0,) * classes
    index = target if spec.target_kind == "index" else None
    pivot = sp.Symbol("pivot", real=True)
    definition = _definition_loss(spec, z, w, y, index)
    state = _row_state(spec, z, w, y, index, pivot)
    results = [(f"{spec.name}: loss", _check(state[loss], definition, f"{spec.name} loss"))]
    for j, zj in enumerate(z):
        expected = grad_scale * sp.diff(definition, zj)
        element = {
            logit: zj,
            weight: w[j],
            target_prob: y[j],
            shifted: spec.transform.subs(logit, zj) - pivot,
        }
        formula = spec.dlogit_target if (index is not None and j == index) else spec.dlogit
        emitted = without_expm1(formula.subs(element).subs(state).subs(element))
        results.append(
            (f"{spec.name}: dlogit_{j}", _check(emitted, expected, f"{spec.name} dL/dz_{j}"))
        )
    if index is not None:
        results.append((f"{spec.name}: coef_rest", verify_coef_rest(spec)))
        results.append((f"{spec.name}: target gradient from the others' sum", verify_target_from_others(spec)))
    results.append((f"{spec.name}: online rescale", verify_online_rescale(spec)))
    results.append((f"{spec.name}: online merge", verify_online_merge(spec)))
    results.append((f"{spec.name}: split sum", verify_split_sum(spec)))
    results.append((f"{spec.name}: dlogit from stored", verify_stored_gradient(spec)))
    results.append((f"{spec.name}: single-chunk stored scale", verify_single_chunk_stored_scale(spec)))
    results.append((f"{spec.name}: row values at the default options", verify_default_options(spec)))
    results.append((f"{spec.name}: dlogit from the transformed logit", verify_transformed_gradient(spec)))
    results.append((f"{spec.name}: mean z-loss over counted rows", verify_mean_z_loss(spec)))
    return results


def verify_coef_rest(spec: KernelSpec) -> Verdict:
    """coef_rest = coef_prob - coef_smooth target_weight - grad_scale (1 - eps) target_weight,
    the target's share taken out of coef_prob (symbolically)."""
    values = dict(spec.row_values)
    target_share = grad_scale * (1 - label_smoothing) * target_weight
    return check_equal(values[coef_rest],
                       values[coef_prob] - values[coef_smooth] * target_weight - target_share,
                       step=f"{spec.name} coef_rest")


def verify_target_from_others(spec: KernelSpec, value: sp.Expr | None = None,
                              total: sp.Expr | None = None) -> Verdict:
    """``dlogit_target_from_others`` equals ``dlogit_target`` when sum_exp is
    ``sum_exp_from_others``, with target_term the spec's exp_term at target_shifted, and
    log_sum_exp = log(sum_exp), the first row value (symbolically).  ``value`` and ``total``
    replace the spec's two expressions (to show that a wrong one is refused)."""
    value = spec.dlogit_target_from_others if value is None else value
    total = spec.sum_exp_from_others if total is None else total
    row_values = dict(spec.row_values)
    total = total.xreplace({target_term: spec.exp_term.xreplace({shifted: target_shifted})})
    general = without_expm1(spec.dlogit_target).xreplace({log_sum_exp: row_values[log_sum_exp]})
    return check_equal(general.xreplace({sum_exp: total}), value.xreplace({sum_exp: total}),
                       step=f"{spec.name} target gradient from the others' sum")


def verify_stored_gradient(
    spec: KernelSpec,
    gradient: sp.Expr | None = None,
    scale_value: sp.Expr | None = None,
) -> Verdict:
    """``dlogit_from_stored`` equals ``dlogit`` for any stored_max (symbolically).

    With stored = exp(transform - stored_max) and stored_scale = ``stored_scale_value``, and
    shifted = transform - row_max in ``dlogit``.  ``gradient`` and ``scale_value`` replace the
    spec's expressions (to show that a wrong one is refused).
    """
    gradient = spec.dlogit_from_stored if gradient is None else gradient
    scale_value = spec.stored_scale_value if scale_value is None else scale_value
    stored_value = sp.exp(spec.transform - stored_max)
    lhs = gradient.xreplace({stored_scale: scale_value, stored: stored_value})
    lhs = lhs.xreplace({stored_shifted: spec.stored_shifted_value})
    rhs = spec.dlogit.xreplace({shifted: spec.element_shifted})
    return check_equal(lhs, rhs, step=f"{spec.name} dlogit from the stored exponential")


def verify_transformed_gradient(spec: KernelSpec, gradient: sp.Expr | None = None) -> Verdict:
    """``dlogit_from_transformed`` (``gradient`` replaces it, to show that a wrong one is refused)
    and ``shifted_from_transformed`` read no raw logit and equal ``dlogit`` and
    ``element_shifted`` with transformed = ``transform`` (symbolically)."""
    gradient = spec.dlogit_from_transformed if gradient is None else gradient
    steps = [*spec.from_transformed_steps, ("dlogit", gradient), ("shifted", spec.shifted_from_transformed)]
    for name, expr in steps:
        if logit in expr.free_symbols:
            raise ProofError(f"step '{spec.name} {name} from the transformed logit' does not hold: "
                             f"it still reads the raw logit: {expr}")

    def in_logits(expr: sp.Expr) -> sp.Expr:
        for symbol, value in reversed(spec.from_transformed_steps):
            expr = expr.xreplace({symbol: value})
        return expr.xreplace({transformed: spec.transform})

    check_equal(in_logits(spec.shifted_from_transformed), spec.element_shifted,
                step=f"{spec.name} shifted from the transformed logit")
    return check_equal(in_logits(gradient), spec.dlogit,
                       step=f"{spec.name} dlogit from the transformed logit")


def verify_single_chunk_stored_scale(spec: KernelSpec, value: sp.Expr | None = None) -> Verdict:
    """``single_chunk_stored_scale`` equals ``stored_scale_value`` with stored_max = row_max and
    log_sum_exp = log(sum_exp), the first row value (symbolically).  ``value`` replaces the
    spec's expression (to show that a wrong one is refused)."""
    value = spec.single_chunk_stored_scale if value is None else value
    row_values = dict(spec.row_values)
    general = spec.stored_scale_value.xreplace(
        {stored_shifted: spec.stored_shifted_value.xreplace({stored_max: row_max})})
    return check_equal(general.xreplace({log_sum_exp: row_values[log_sum_exp]}), value,
                       step=f"{spec.name} single-chunk stored scale")


def verify_default_options(
    spec: KernelSpec, values: tuple[tuple[sp.Symbol, sp.Expr], ...] | None = None
) -> Verdict:
    """:func:`at_default_options` of the row values and of :func:`default_option_gradients`
    equals the spec's own expressions at label_smoothing = lse_square_scale = 0, with every
    row value written out in terms of the row's sums (symbolically, else numerically at 40
    digits).  ``values`` replaces the evaluated row values (to show that a wrong one is
    refused)."""
    gradients = default_option_gradients(spec)
    plain_values, plain_gradients = at_default_options(spec.row_values, *gradients)
    plain_values = plain_values if values is None else values

    def written_out(row_values, expr: sp.Expr) -> sp.Expr:
        for symbol, value in reversed(row_values):
            expr = expr.xreplace({symbol: value})
        return expr

    pairs = [(symbol, general, plain) for (symbol, general), (_, plain)
             in zip(spec.row_values, plain_values, strict=True)]
    pairs += [(f"gradient {i}", general, plain)
              for i, (general, plain) in enumerate(zip(gradients, plain_gradients, strict=True))]
    methods = set()
    for name, general, plain in pairs:
        verdict = check_equal(written_out(spec.row_values, general).subs(DEFAULT_OPTIONS),
                              written_out(plain_values, plain),
                              step=f"{spec.name} {name} at the default options")
        methods.add(verdict.method)
    method = "numeric" if "numeric" in methods else "symbolic"
    return Verdict(method, f"{len(pairs)} row values and gradients at label_smoothing = "
                           "lse_square_scale = 0")


def verify_mean_z_loss(spec: KernelSpec, rows: int = 3) -> Verdict:
    """A "mean" with the rows' z-loss scale ``mean_lse_square_scale`` is the weighted mean of
    the cross-entropy plus lambda times the mean of lse^2 over the counted rows (symbolically),
    in the loss and in the z-term's gradient coefficient 2 lambda lse grad_scale.

    Row n has weight share r_n > 0 of the denominator D = sum r_n, cross-entropy share c_n
    (already weighted) and lse l_n; K = ``rows`` rows are counted.  So doubling every class
    weight leaves the z-term unchanged (Liger-Kernel's rule; PyTorch has no z-loss).
    """
    shares = sp.symbols(f"r_0:{rows}", positive=True)
    ce = sp.symbols(f"c_0:{rows}", real=True)
    lses = sp.symbols(f"l_0:{rows}", real=True)
    total = sp.Add(*shares)
    scale = spec.mean_lse_square_scale.xreplace({denominator: total, counted_rows: rows})
    kernel_total = sp.Add(*[c + scale * lv**2 for c, lv in zip(ce, lses, strict=True)])
    kernel_mean = spec.loss_mean.xreplace({loss_total: kernel_total, denominator: total})
    wanted = sp.Add(*ce) / total + lse_square_scale * sp.Add(*[lv**2 for lv in lses]) / rows
    check_equal(kernel_mean, wanted, step=f"{spec.name} mean z-loss over counted rows")
    # The row value 2 zloss_slope = 2 scale lse, times the mean's grad_scale.
    slope = spec.scale_mean.xreplace({denominator: total}) * 2 * scale * lses[0]
    return check_equal(slope, grad_output * 2 * lse_square_scale * lses[0] / rows,
                       step=f"{spec.name} mean z-loss gradient over counted rows")


def verify_online_rescale(spec: KernelSpec) -> Verdict:
    """The running sums, rescaled from old_max to new_max, equal the sums taken at new_max."""
    values = sp.symbols("v_0:3", real=True)
    coefficients = sp.symbols("a_0:3", real=True)

    def at(pivot: sp.Symbol) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
        return (
            sp.Add(*[sp.exp(v - pivot) for v in values]),
            sp.Add(*coefficients),
            sp.Add(*[a * (v - pivot) for a, v in zip(coefficients, values, strict=True)]),
        )

    old_sums, new_sums = at(old_max), at(new_max)
    state = {sum_exp: old_sums[0], weight_sum: old_sums[1], shifted_sum: old_sums[2]}
    check_equal(spec.rescale_sum_exp.subs(state), new_sums[0], step=f"{spec.name} rescale sum_exp")
    return check_equal(
        spec.rescale_shifted_sum.subs(state), new_sums[2], step=f"{spec.name} rescale shifted_sum"
    )


def verify_split_sum(spec: KernelSpec, split_row_values=None) -> Verdict:
    """The split of sum_exp into top_count + rest_sum is exact (symbolically).

    An element's top_term + rest_term is its exp(shifted), at the maximum (shifted = 0) and off
    it; so do the unsplit shares, and the shares split again from a stored term (at 1 and off
    it) add up to it; the split's rescale gives the rescaled sum_exp; ``split_row_values`` equal
    ``row_values`` at sum_exp = top_count + rest_sum, log1p(u) being log(1 + u).
    ``split_row_values`` replaces the spec's (to show that a wrong one is refused).
    """
    split_row_values = spec.split_row_values if split_row_values is None else split_row_values
    off_max = sp.Symbol("off_max", negative=True)
    parts = spec.top_term + spec.rest_term.xreplace({exp_term: spec.exp_term})
    for value in (sp.Integer(0), off_max):
        check_equal(parts.xreplace({shifted: value}), spec.exp_term.xreplace({shifted: value}),
                    step=f"{spec.name} split term at shifted = {value}")
    unsplit = spec.top_term_unsplit + spec.rest_term_unsplit.xreplace({exp_term: spec.exp_term})
    check_equal(unsplit, spec.exp_term, step=f"{spec.name} split term unsplit")
    off_one = sp.Symbol("off_one", positive=True)
    restored = spec.top_term_from_stored + spec.rest_term_from_stored
    for value in (sp.Integer(1), 1 + off_one, 1 - off_one):
        check_equal(restored.xreplace({stored: value}), value,
                    step=f"{spec.name} split term from stored at stored = {value}")
    rescaled = spec.rescale_top_count + spec.rescale_rest_sum
    check_equal(rescaled, spec.rescale_sum_exp.xreplace({sum_exp: spec.split_sum_exp}),
                step=f"{spec.name} split rescale")
    (excess, excess_value), *split_values = split_row_values
    if excess != top_excess or [s for s, _ in split_values] != [s for s, _ in spec.row_values]:
        raise ProofError(f"step '{spec.name} split row values' does not hold: other names")
    verdict = None
    for (symbol, split_value), (_, value) in zip(split_values, spec.row_values, strict=True):
        verdict = check_equal(
            split_value.replace(lambda e: isinstance(e, log1p), lambda e: sp.log(1 + e.args[0]))
            .xreplace({top_excess: excess_value}),
            value.xreplace({sum_exp: spec.split_sum_exp}),
            step=f"{spec.name} split row value {symbol}")
    return verdict


def verify_online_merge(
    spec: KernelSpec, merge_sum_exp: sp.Expr | None = None, merge_shifted_sum: sp.Expr | None = None
) -> Verdict:
    """Two partial states, each taken at its own maximum and merged at new_max by the spec's
    merge expressions (added part by part, as the CUDA kernels do), equal the sums taken at
    new_max over both parts.  The arguments replace the spec's expressions (to show that a
    wrong one is refused)."""
    merge_sum_exp = spec.merge_sum_exp if merge_sum_exp is None else merge_sum_exp
    merge_shifted_sum = spec.merge_shifted_sum if merge_shifted_sum is None else merge_shifted_sum
    values = sp.symbols("v_0:3", real=True)
    coefficients = sp.symbols("a_0:3", real=True)
    part_max = sp.Symbol("part_max", real=True)
    merged_exp = merged_shifted = sp.Integer(0)
    for part, pivot in (((0, 1), old_max), ((2,), part_max)):
        state = {
            sum_exp: sp.Add(*[sp.exp(values[i] - pivot) for i in part]),
            weight_sum: sp.Add(*[coefficients[i] for i in part]),
            shifted_sum: sp.Add(*[coefficients[i] * (values[i] - pivot) for i in part]),
            old_max: pivot,
        }
        merged_exp += merge_sum_exp.xreplace(state)
        merged_shifted += merge_shifted_sum.xreplace(state)
    total_exp = sp.Add(*[sp.exp(v - new_max) for v in values])
    total_shifted = sp.Add(*[a * (v - new_max) for a, v in zip(coefficients, values, strict=True)])
    check_equal(merged_exp, total_exp, step=f"{spec.name} merge sum_exp")
    return check_equal(merged_shifted, total_shifted, step=f"{spec.name} merge shifted_sum")


def _check(lhs: sp.Expr, rhs: sp.Expr, step: str) -> Verdict:
    return check_equal(lhs, rhs, step=step, symbolic=False)
