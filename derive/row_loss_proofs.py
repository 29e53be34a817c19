"""The claims of a row-wise loss: its kernel spec against SymPy's derivative of its definition.

Each claim rebuilds what the kernels evaluate (row values, element values, gradient, loss)
in terms of the definition's sums and entries and checks it against the definition for a
symbolic number of classes: symbolically where SymPy decides it, else with mpmath at 40
digits at random points for C in (1, 2, 3, 5, 8), and the result says which.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from gradsmith.derive import row_loss as rl
from gradsmith.derive.check import (
    ProofError,
    Verdict,
    check_equal,
    numerically_equal,
    without_expm1,
)
from sympy.codegen.cfunctions import expm1, log1p

CLASS_COUNTS = (1, 2, 3, 5, 8)
PIVOT_Z = sp.Symbol("pivot_z", real=True)
PIVOT_U = sp.Symbol("pivot_u", real=True)


@dataclass(frozen=True)
class LossClaim:
    name: str
    verdict: Verdict


def _element_map(row: rl.SymbolicRow, index: sp.Basic) -> dict:
    return {rl.log_p: row.log_p(index), rl.log_q: row.log_q(index), rl.p_j: row.p(index),
            rl.q_j: row.q(index), rl.class_alpha: row.alpha(index), rl.logit: rl.z[index],
            rl.teacher_logit: rl.u[index]}


def definition_terms(spec: rl.RowLossSpec, expr: sp.Expr, row: rl.SymbolicRow) -> sp.Expr:
    """``expr`` (in the spec's symbols) written with the definition's sums and entries."""
    for symbol, value in reversed(spec.row_values + spec.final_values):
        expr = expr.xreplace({symbol: value})
    for accumulator in spec.accumulators:
        expr = expr.xreplace({accumulator.symbol: row.sum(
            lambda k, term=accumulator.term: _in_terms(spec, term, row, k))})
    expr = _in_terms(spec, expr, row, rl.j)
    return without_expm1(expr.xreplace({
        # The maxima are free pivots: the kernels' shift by any pivot is exact.
        rl.logit_max: PIVOT_Z, rl.logit_log_sum_exp: row.lse(row.z) - PIVOT_Z,
        rl.teacher_logit_max: PIVOT_U, rl.teacher_logit_log_sum_exp: row.lse(row.u) - PIVOT_U,
        rl.target_logit: rl.z[rl.t],
        rl.target_alpha: row.alpha(rl.t), rl.is_target: sp.KroneckerDelta(rl.j, rl.t),
        rl.grad_scale: 1,
    }))


def _in_terms(spec: rl.RowLossSpec, expr: sp.Expr, row: rl.SymbolicRow, index) -> sp.Expr:
    for symbol, value in reversed(spec.element_values):
        expr = expr.xreplace({symbol: value})
    return expr.xreplace(_element_map(row, index))


def check(lhs: sp.Expr, rhs: sp.Expr, step: str, definition: rl.LossDefinition) -> Verdict:
    """``lhs == rhs`` for symbolic C: symbolically, else numerically at 40 digits.

    The numeric check samples the options at random within their ranges for C in (2, 3, 5, 8),
    and for C = 1 (where p_t = 1) at the definition's ``sample`` values when it gives them (a
    focusing parameter gamma < 1 makes (1 - p_t)^(gamma - 1) infinite there).
    """
    difference = sp.sympify(lhs - rhs)
    # sp.simplify on sums over a symbolic C takes minutes; these decide the easy cases.
    if any(simplifier(difference) == 0 for simplifier in (sp.cancel, sp.expand, sp.together)):
        return Verdict("symbolic", "SymPy reduces the difference to 0")
    fixed = {o.symbol: definition.sample[o.name] for o in definition.options
             if o.name in definition.sample}
    runs = [((lhs, rhs), CLASS_COUNTS[1:]), ((lhs.xreplace(fixed), rhs.xreplace(fixed)), (1,))]
    details = []
    for (left, right), counts in runs:
        holds, detail = numerically_equal(left, right, class_symbol=rl.C, class_counts=counts)
        if not holds:
            raise ProofError(f"step '{step}' does not hold: {detail}")
        details.append(detail)
    if fixed:
        details[-1] += " at " + ", ".join(f"{k} = {v}" for k, v in fixed.items())
    return Verdict("numeric", "; ".join(details))


def prove(definition: rl.LossDefinition, losses=None) -> list[LossClaim]:
    """Every claim of ``definition``; raises ProofError (or RowLossError) naming what fails.

    ``losses`` resolves the name of another loss for ``reduces_to`` claims.
    """
    spec = rl.kernel_spec(definition)
    fitted = rl.fit(definition)
    options = definition.option_symbols()
    row = rl.SymbolicRow(spec.scale, definition.class_weights)
    name = definition.name
    claims = []
    gradient = spec.dlogit
    if spec.dlogit_at_target is not None:  # the kernels print both values and pick one per class
        gradient = (1 - rl.is_target) * spec.dlogit + rl.is_target * spec.dlogit_at_target
    emitted = definition_terms(spec, gradient, row)
    claims.append(LossClaim(f"{name}: kernel dL/dz_j = SymPy's derivative",
                            check(emitted, fitted.derivative, f"{name} gradient", definition)))
    emitted_loss = definition_terms(spec, rl.row_loss, row)
    claims.append(LossClaim(f"{name}: kernel loss = definition",
                            check(emitted_loss, fitted.loss, f"{name} loss", definition)))
    if definition.closed_form is not None:
        stated = definition.closed_form(row, **options)
        shown = (definition.closed_form.__doc__ or "the stated closed form").strip()
        claims.append(LossClaim(f"{name}: dL/dz_j = {shown}",
                                check(stated, fitted.derivative, f"{name} closed form",
                                      definition)))
    for text, values, other_name in definition.reduces_to:
        other = losses(other_name) if losses is not None else None
        if other is None:
            raise ProofError(f"{name}: {text}: no loss named {other_name!r}")
        fixed = {options[key]: value for key, value in values.items()}
        # The other loss on the same row: with class weights exactly when this one has them.
        other_row = rl.SymbolicRow(sp.sympify(other.scale(**other.option_symbols())),
                                   definition.class_weights)
        target = other.loss(other_row, **other.option_symbols())
        other_derivative = rl.restrict_to_class(sp.diff(target, rl.z[rl.j]).doit())
        claims.append(LossClaim(f"{name}: {text}", check(
            fitted.loss.xreplace(fixed), target, f"{name} {text}", definition)))
        claims.append(LossClaim(f"{name}: {text} (gradient)", check(
            fitted.derivative.xreplace(fixed), other_derivative,
            f"{name} {text}, gradient", definition)))
    claims.append(LossClaim("online normalizer: rescaled sums and lse", _online(spec)))
    claims.append(LossClaim("fast exp domain: every exponent of the sweeps is <= 0",
                            _sweep_exponents(spec)))
    row_domain = fast_row_values(spec)
    if row_domain is not None:
        claims.append(LossClaim("fast exp and expm1 domain: every exponent of the row values is "
                                "<= 0", row_domain))
    claims.append(LossClaim("online normalizer: merge of two partial rows", _merge(spec)))
    claims.append(LossClaim("two-pass normalizer: the maximum counted, the rest summed",
                            _two_pass(spec)))
    if any(symbol == rl.one_minus_p_target for symbol, _ in spec.row_values):
        x = sp.Symbol("x", real=True)
        claims.append(LossClaim("-expm1(log p_t) = 1 - p_t", check(
            (-expm1(x)).rewrite(sp.exp), 1 - sp.exp(x), "expm1 rewrite", definition)))
    ratio = dict(spec.row_values).get(rl.log_p_target_ratio)
    if ratio is not None:
        claims.append(LossClaim("log p_t / (1 - p_t) at p_t = 1 is its limit, -1",
                                _ratio_at_one(ratio)))
    return claims


def _ratio_at_one(ratio: sp.Expr) -> Verdict:
    """The value the kernels give log_p_target_ratio at log p_t = 0 (p_t = 1), where its
    quotient is 0/0, is the quotient's limit there from below (log p_t <= 0).  Elsewhere the
    ratio is the quotient, which the gradient's claim checks against SymPy's derivative."""
    x = sp.Symbol("x", real=True)
    limit = sp.limit(x / (1 - sp.exp(x)), x, 0, dir="-")
    value = ratio.xreplace({rl.log_p_target: sp.Integer(0)})
    if value != limit:
        raise ProofError(f"log_p_target_ratio is {value} at p_t = 1, where log p_t / (1 - p_t) "
                         f"tends to {limit}")
    return Verdict("symbolic", f"the ratio's value at log p_t = 0 is SymPy's limit, {limit}")


def _online(spec: rl.RowLossSpec) -> Verdict:
    """The sweep's normalizer.  With the maximum's own term left out of the sum: a new maximum
    rescales the sum of the other terms and adds the old maximum's 1, and row_max +
    log1p(sum) is log sum_j exp(scaled_j)."""
    others = sp.symbols("v_1:3", real=True)

    def rest(pivot: sp.Symbol, values) -> sp.Expr:
        return sp.Add(*[spec.normalizer_term.xreplace({rl.scaled: v, rl.row_max: pivot})
                        for v in values])

    rescaled = spec.normalizer_rescale.xreplace({rl.sum_exp: rest(rl.old_max, others)})
    verdict = check_equal(rescaled, rest(rl.new_max, (rl.old_max, *others)),
                          step="online rescale of the sum")
    log_sum = spec.normalizer_log_sum.xreplace({rl.sum_exp: rest(rl.row_max, others)})
    log_sum = log_sum.replace(lambda e: isinstance(e, log1p), lambda e: sp.log(1 + e.args[0]))
    check_equal(rl.row_max + log_sum,
                sp.log(sp.exp(rl.row_max) + sp.Add(*[sp.exp(v) for v in others])),
                step="log-sum from the sweep", symbolic=False)
    return verdict


def _sweep_exponents(spec: rl.RowLossSpec) -> Verdict:
    """Every exp argument of the sweeps is <= 0, decided by SymPy's assumptions under what the
    sweeps guarantee: the term's branch has scaled <= row_max and the rescale's new_max >
    old_max; in the gradient sweep each normalizer's maximum bounds its scaled logits (the
    scale is positive) and its log-sum log1p(sum_exp) is >= 0; the element values that later
    ones read as nonpositive symbols (log p_j, log q_j) are shown nonpositive first."""
    if spec.scale.is_positive is not True:
        raise ProofError(f"{spec.name}: the scale {spec.scale} is not known to be positive")
    if spec.normalizer_log_sum.is_nonnegative is not True:
        raise ProofError(f"{spec.name}: the log-sum {spec.normalizer_log_sum} is not known to "
                         "be >= 0")
    below = {rl.scaled: rl.row_max - sp.Symbol("gap", nonnegative=True),
             rl.new_max: rl.old_max + sp.Symbol("rise", positive=True)}
    for logit, maximum, _ in spec.normalizers:
        below[logit] = (maximum - sp.Symbol(f"{logit}_gap", nonnegative=True)) / spec.scale
    values = {}
    for symbol, expr in spec.element_values:
        values[symbol] = sp.expand(expr.xreplace(values).xreplace(below))
        if symbol.is_nonpositive and values[symbol].is_nonpositive is not True:
            raise ProofError(f"{spec.name}: {symbol} = {expr} is not shown to be <= 0")
    exponents = {e.args[0] for expr in spec.sweep_expressions() for e in expr.atoms(sp.exp)}
    for exponent in sorted(exponents, key=sp.default_sort_key):
        if sp.expand(exponent.xreplace(below)).is_nonpositive is not True:
            raise ProofError(f"{spec.name}: the exponent {exponent} is not shown to be <= 0, "
                             "outside the fast exp's domain")
    return Verdict("symbolic", f"SymPy's assumptions decide {len(exponents)} exponents <= 0 "
                               "under the sweeps' bounds")


def fast_row_values(spec: rl.RowLossSpec) -> Verdict | None:
    """Whether the row values' exp and expm1 may run on the fast functions (domains x <= 0 and
    x <= 1/2): SymPy's assumptions decide every argument <= 0 once each normalizer's maximum
    bounds its scaled target logit and its log-sum is >= 0 (the sweeps' guarantees), row values
    read as nonpositive symbols (log p_t) shown nonpositive first.  The final values count too:
    without row sums C prints them with the row values.  None where there is no such argument,
    or one is not decided: the C row values then call libm (a loss's own exponents may leave
    the domain)."""
    if spec.normalizer_log_sum.is_nonnegative is not True:
        return None
    below = {}
    if rl.target_logit in spec.gathered:
        below[rl.target_logit] = (rl.logit_max - sp.Symbol("target_gap", nonnegative=True)) / spec.scale
    values = {}
    arguments = set()
    for symbol, expr in spec.row_values + spec.final_values:
        expr = expr.xreplace(values).xreplace(below)
        arguments |= {sp.expand(e.args[0]) for e in expr.atoms(sp.exp, expm1)}
        values[symbol] = sp.expand(expr, power_exp=False)
        if symbol.is_nonpositive and values[symbol].is_nonpositive is not True:
            return None
    if not arguments or any(a.is_nonpositive is not True for a in arguments):
        return None
    shown = ", ".join(sorted(map(str, arguments)))
    return Verdict("symbolic", f"SymPy's assumptions decide {shown} <= 0 under the sweeps' "
                               "bounds")


def _merge(spec: rl.RowLossSpec) -> Verdict:
    """Parts A (maximum m_a, others a_1, a_2) and B (maximum m_b <= m_a, other b_1) of a row,
    each swept at its own maximum, merge into the sum over the whole row at m_a."""
    m_a, m_b, a_1, a_2, b_1 = sp.symbols("m_a m_b a_1 a_2 b_1", real=True)

    def rest(pivot: sp.Symbol, values) -> sp.Expr:
        return sp.Add(*[spec.normalizer_term.xreplace({rl.scaled: v, rl.row_max: pivot})
                        for v in values])

    merged = spec.normalizer_merge.xreplace({rl.sum_exp: rest(m_a, (a_1, a_2)), rl.row_max: m_a,
                                             rl.other_sum_exp: rest(m_b, (b_1,)),
                                             rl.other_max: m_b})
    return check_equal(merged, rest(m_a, (a_1, a_2, m_b, b_1)), step="online merge of the sum")


def _two_pass(spec: rl.RowLossSpec) -> Verdict:
    """The two-pass sweep gives the online sweep's sum.  An element's top_term + rest_term is
    its term, at the maximum and below it; and for rows whose maximum occurs k = 1, 2, 3 times
    beside two smaller elements, top_excess + rest_sum from the counts is the sum of the terms
    of every element but one maximum."""
    gap = sp.Symbol("gap", positive=True)
    verdict = None
    for value in (rl.row_max, rl.row_max - gap):
        at = {rl.scaled: value}
        verdict = check_equal((spec.normalizer_top_term + spec.normalizer_rest_term).xreplace(at),
                              spec.normalizer_term.xreplace(at),
                              step=f"two-pass split of the term at scaled = {value}")
    below = [rl.row_max - g for g in sp.symbols("gap_1:3", positive=True)]
    for count in (1, 2, 3):
        row = [rl.row_max] * count + below
        tops = sp.Add(*[spec.normalizer_top_term.xreplace({rl.scaled: v}) for v in row])
        rests = sp.Add(*[spec.normalizer_rest_term.xreplace({rl.scaled: v}) for v in row])
        excess = spec.normalizer_top_excess.xreplace({rl.top_count: tops})
        split = spec.normalizer_split_sum.xreplace({rl.top_excess: excess, rl.rest_sum: rests})
        others = sp.Add(*[spec.normalizer_term.xreplace({rl.scaled: v}) for v in row[1:]])
        verdict = check_equal(split, others, step=f"two-pass sum with the maximum {count} times")
    return verdict

