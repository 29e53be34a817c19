"""Any row-wise loss over the softmax of one or two rows of logits, from its definition alone.

A loss module (see ``gradsmith.derive.losses``) states its per-row loss for a symbolic number
of classes C.  From that definition SymPy's ``diff`` gives dL/dz_j, which is fitted to the
shape the generic kernels evaluate,

    dL/dz_j = coef_p p_j + coef_target [j = t] + coef_q q_j,

with row coefficients built from row statistics (the log-sum-exp of each normalizer, the
gathered z_t and alpha_t, the loss's options) and sums over the row that the kernels
accumulate.  A definition that does not reduce to this shape raises :class:`RowLossError`
naming what does not fit; it never becomes a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from gradsmith.derive.row_loss_definition import (  # noqa: F401 - the modules' vocabulary
    DENOMINATORS,
    KINDS,
    C,
    ConcreteRow,
    LossDefinition,
    Option,
    Reduction,
    RowLossError,
    SymbolicRow,
    alpha,
    j,
    t,
    u,
    z,
)
from sympy.codegen.cfunctions import expm1, log1p

# Row statistics: the log-sum-exp of each normalizer's scaled logits, and gathered entries.
lse_z = sp.Symbol("lse_z", real=True)
lse_u = sp.Symbol("lse_u", real=True)
target_logit = sp.Symbol("target_logit", real=True)
target_alpha = sp.Symbol("target_alpha", positive=True)
log_p_target = sp.Symbol("log_p_target", nonpositive=True)
p_target = sp.Symbol("p_target", positive=True)
one_minus_p_target = sp.Symbol("one_minus_p_target", nonnegative=True)
# log p_t / (1 - p_t), in (-inf, -1]: where a coefficient reads log p_t (1 - p_t)^(a - 1), that
# power is infinite at p_t = 1 for a < 1 (and overflows before it) while the product tends to 0,
# so the coefficient reads log_p_target_ratio (1 - p_t)^a instead, whose ratio is -1 there.
log_p_target_ratio = sp.Symbol("log_p_target_ratio", real=True)
# Element values of class j in the gradient sweep.
logit = sp.Symbol("logit", real=True)
teacher_logit = sp.Symbol("teacher_logit", real=True)
class_alpha = sp.Symbol("class_alpha", positive=True)
log_p = sp.Symbol("log_p", nonpositive=True)
log_q = sp.Symbol("log_q", nonpositive=True)
p_j = sp.Symbol("p_j", positive=True)
q_j = sp.Symbol("q_j", positive=True)
is_target = sp.Symbol("is_target", nonnegative=True)
# The online normalizer of one row: the running maximum and the sum of exp(scaled - max) over
# the other elements (the maximum's own term, 1, is left out, so that log1p keeps the digits
# of a sum close to 1: 1 - p_t stays exact as p_t -> 1).  An element above the maximum
# rescales the sum (the old maximum's 1 joins it); any other adds its term.
scaled = sp.Symbol("scaled", real=True)
row_max = sp.Symbol("row_max", real=True)
old_max = sp.Symbol("old_max", real=True)
new_max = sp.Symbol("new_max", real=True)
sum_exp = sp.Symbol("sum_exp", nonnegative=True)
NORMALIZER_TERM = sp.exp(scaled - row_max)
NORMALIZER_RESCALE = (sum_exp + 1) * sp.exp(old_max - new_max)
NORMALIZER_LOG_SUM = log1p(sum_exp)
# Two partial normalizers of disjoint parts of a row, (row_max, sum_exp) and (other_max,
# other_sum_exp) with row_max >= other_max, merge into one at row_max: the other part's sum
# and its maximum's 1, rescaled (the parallel kernels merge their threads' states this way).
other_max = sp.Symbol("other_max", real=True)
other_sum_exp = sp.Symbol("other_sum_exp", nonnegative=True)
NORMALIZER_MERGE = sum_exp + (other_sum_exp + 1) * sp.exp(other_max - row_max)
# The same sum in two passes (the C kernels, whose loops then vectorise): with the maximum
# found first, each element adds 1 to top_count where it is the maximum and its term to
# rest_sum where it is not; the other elements' sum is top_excess + rest_sum, with top_excess =
# top_count - 1 an exact integer computed first, so that a sum close to 0 keeps its digits.
top_count = sp.Symbol("top_count", nonnegative=True, integer=True)
top_excess = sp.Symbol("top_excess", nonnegative=True, integer=True)
rest_sum = sp.Symbol("rest_sum", nonnegative=True)
NORMALIZER_TOP_TERM = sp.Piecewise((1, sp.Eq(scaled, row_max)), (0, True))
NORMALIZER_REST_TERM = sp.Piecewise((NORMALIZER_TERM, sp.Ne(scaled, row_max)), (0, True))
NORMALIZER_TOP_EXCESS = top_count - 1
NORMALIZER_SPLIT_SUM = top_excess + rest_sum
# Per normalizer after the sweep: its maximum and the log of its rescaled sum; the logits are
# shifted by the maximum before the log-sum is subtracted, exact however large they are.
logit_max = sp.Symbol("logit_max", real=True)
teacher_logit_max = sp.Symbol("teacher_logit_max", real=True)
logit_log_sum_exp = sp.Symbol("logit_log_sum_exp", nonnegative=True)
teacher_logit_log_sum_exp = sp.Symbol("teacher_logit_log_sum_exp", nonnegative=True)
target_shifted = sp.Symbol("target_shifted", real=True)
shifted_p = sp.Symbol("shifted_p", real=True)
shifted_q = sp.Symbol("shifted_q", real=True)
# Row coefficients of the gradient and the row's loss.
coef_p = sp.Symbol("coef_p", real=True)
coef_target = sp.Symbol("coef_target", real=True)
coef_q = sp.Symbol("coef_q", real=True)
row_loss = sp.Symbol("row_loss", real=True)
grad_scale = sp.Symbol("grad_scale", real=True)
# Each gathered entry's value in a row that gathers none (its target ignored or bad): the row
# is not evaluated, so any value in the entry's domain does (an alpha is positive).
GATHERED_DEFAULTS = {target_logit: sp.Integer(0), target_alpha: sp.Integer(1)}

@dataclass(frozen=True)
class Accumulator:
    """A sum over the row, ``sum_j term``, accumulated in the gradient sweep."""

    symbol: sp.Symbol
    term: sp.Expr  # in log_p, log_q, class_alpha and the options


@dataclass(frozen=True)
class RowLossSpec:
    """The kernel spec of a loss: everything a generic template prints, as SymPy expressions.

    ``scale`` multiplies each logit before its softmax (both normalizers).  ``row_values``
    follow the first sweep (which gives each normalizer's maximum and log-sum), in order; the gradient
    sweep evaluates ``element_values`` and adds each accumulator's term; ``final_values``
    then give ``row_loss``.  ``dlogit`` is each element's gradient off the target class and,
    for class targets, ``dlogit_at_target`` (``dlogit + coef_target``) at it.  Options are
    symbols named as the loss module names them.
    """

    name: str
    kind: str
    class_weights: bool
    options: tuple[Option, ...]
    scale: sp.Expr
    normalizers: tuple[tuple[sp.Symbol, sp.Symbol, sp.Symbol], ...]  # (logit, max, log-sum)
    scaled_logit: sp.Expr  # scale * logit: what the normalizer sums over
    normalizer_term: sp.Expr
    normalizer_rescale: sp.Expr
    normalizer_log_sum: sp.Expr
    normalizer_merge: sp.Expr  # read by the parallel kernels only, so outside expressions()
    # The two-pass form (C): per element, top_term and rest_term; per row, top_excess and then
    # the split sum_exp.
    normalizer_top_term: sp.Expr
    normalizer_rest_term: sp.Expr
    normalizer_top_excess: sp.Expr
    normalizer_split_sum: sp.Expr
    gathered: tuple[sp.Symbol, ...]
    gathered_defaults: tuple[sp.Expr, ...]  # GATHERED_DEFAULTS of each gathered entry
    row_values: tuple[tuple[sp.Symbol, sp.Expr], ...]
    element_values: tuple[tuple[sp.Symbol, sp.Expr], ...]
    dlogit: sp.Expr
    dlogit_at_target: sp.Expr | None  # None without a target class
    accumulators: tuple[Accumulator, ...]
    final_values: tuple[tuple[sp.Symbol, sp.Expr], ...]
    reductions: tuple[Reduction, ...]
    default_reduction: str

    def sweep_expressions(self) -> list[sp.Expr]:
        """What the sweeps evaluate per element: the normalizer's term, rescale and split rest
        term, the element values, the gradient and the accumulators' terms.  Their exponentials run on
        the fast exp, whose domain (x <= 0) ``row_loss_proofs`` proves they stay in."""
        return [self.normalizer_term, self.normalizer_rescale, self.normalizer_rest_term,
                *(e for _, e in self.element_values), *self.gradients(),
                *(a.term for a in self.accumulators)]

    def gradients(self) -> list[sp.Expr]:
        """``dlogit``, then ``dlogit_at_target`` where there is a target class."""
        return [self.dlogit] + ([] if self.dlogit_at_target is None else [self.dlogit_at_target])

    def expressions(self) -> list[sp.Expr]:
        """Every expression of the spec, in a fixed order (for the content hash)."""
        named = [self.scale, *self.gradients(), self.scaled_logit, self.normalizer_term,
                 self.normalizer_rescale, self.normalizer_log_sum, self.normalizer_top_term,
                 self.normalizer_rest_term, self.normalizer_top_excess,
                 self.normalizer_split_sum]
        named += [e for _, e in self.row_values + self.element_values + self.final_values]
        named += [a.term for a in self.accumulators]
        named += list(self.gathered_defaults)
        return named


def restrict_to_class(expr: sp.Expr) -> sp.Expr:
    """Piecewise((value, j <= C - 1), (0, True)) -> value: j is a class index."""
    def first(piecewise: sp.Piecewise) -> sp.Expr:
        (value, _), *rest = piecewise.args
        if len(rest) != 1 or rest[0][1] != sp.true or rest[0][0].doit() != 0:
            raise RowLossError(f"a case split that is not the class range: {piecewise}")
        return value
    return expr.replace(lambda e: isinstance(e, sp.Piecewise), first)


def split_exp(expr: sp.Expr) -> sp.Expr:
    """exp(a + b) -> exp(a) exp(b), so that exp(lse) exp(-lse) cancels."""
    return expr.replace(
        lambda e: isinstance(e, sp.exp),
        lambda e: sp.Mul(*[sp.exp(a) for a in sp.Add.make_args(sp.expand(e.args[0]))]),
    )


class _Translator:
    """From the definition's sums and entries to row statistics and accumulators."""

    ELEMENT = (log_p, log_q, class_alpha)

    def __init__(self, scale: sp.Expr):
        self.scale = scale
        self.accumulators: list[Accumulator] = []

    def element(self, index: sp.Basic) -> dict:
        return {z[index]: (log_p + lse_z) / self.scale, u[index]: (log_q + lse_u) / self.scale,
                alpha[index]: class_alpha}

    def _sum(self, total: sp.Sum) -> sp.Expr:
        if len(total.limits) != 1 or tuple(total.limits[0][1:]) != (0, C - 1):
            raise RowLossError(f"a sum that is not over the classes 0..C-1: {total}")
        dummy = total.limits[0][0]
        term = split_exp(total.function.xreplace(self.element(dummy)))
        if dummy in term.free_symbols:
            raise RowLossError(f"a sum whose term reads its index other than as z, u or alpha: {total}")
        result = sp.Integer(0)
        for part in sp.Add.make_args(sp.expand(term, power_exp=False, log=False)):
            constant, varying = part.as_independent(*self.ELEMENT, as_Add=False)
            if varying in (sp.exp(log_p), sp.exp(log_q)):
                result += constant  # the probabilities sum to one
            elif varying == 1:
                result += constant * C
            else:
                result += constant * self._accumulator(varying)
        return result

    def _accumulator(self, term: sp.Expr) -> sp.Symbol:
        for existing in self.accumulators:
            if existing.term == term:
                return existing.symbol
        symbol = sp.Symbol(f"row_sum_{len(self.accumulators)}", real=True)
        self.accumulators.append(Accumulator(symbol, term))
        return symbol

    def __call__(self, expr: sp.Expr) -> sp.Expr:
        expr = restrict_to_class(expr)
        expr = expr.replace(lambda e: isinstance(e, sp.Sum), self._sum)
        expr = expr.xreplace({**self.element(j), z[t]: (log_p_target + lse_z) / self.scale,
                              alpha[t]: target_alpha, sp.KroneckerDelta(j, t): is_target,
                              sp.KroneckerDelta(t, j): is_target})
        expr = split_exp(expr)
        expr = expr.xreplace({sp.exp(log_p): p_j, sp.exp(log_q): q_j,
                              sp.exp(log_p_target): p_target})
        return stable(expr)


def stable(expr: sp.Expr) -> sp.Expr:
    """1 - p_t -> one_minus_p_t (evaluated as -expm1(log p_t), exact as p_t -> 1), and
    log p_t (1 - p_t)^(a - 1) -> log_p_target_ratio (1 - p_t)^a (equal for p_t < 1, and finite
    at p_t = 1, where the power alone is not)."""
    return sp.powsimp(expr.subs(1 - p_target, one_minus_p_target)).replace(
        _reads_log_p_over_power, _log_p_ratio)


def _lowered_power(factor: sp.Expr) -> bool:
    return (isinstance(factor, sp.Pow) and factor.base == one_minus_p_target
            and sp.Integer(-1) in sp.Add.make_args(factor.exp))


def _reads_log_p_over_power(expr: sp.Expr) -> bool:
    return (isinstance(expr, sp.Mul) and log_p_target in expr.args
            and any(_lowered_power(factor) for factor in expr.args))


def _log_p_ratio(product: sp.Mul) -> sp.Expr:
    power = next(factor for factor in product.args if _lowered_power(factor))
    rest = [f for f in product.args if f is not power and f != log_p_target]
    return sp.Mul(log_p_target_ratio, one_minus_p_target ** (power.exp + 1), *rest)


def _free_of(what: str, expr: sp.Expr, forbidden: set) -> None:
    bad = sorted(map(str, expr.free_symbols & forbidden))
    if bad or expr.has(sp.Sum, sp.Indexed, sp.KroneckerDelta):
        reads = bad or [str(a) for a in expr.atoms(sp.Sum, sp.Indexed, sp.KroneckerDelta)]
        raise RowLossError(f"{what} depends on {', '.join(reads)}: the gradient is not "
                           "coef_p p_j + coef_target [j = t] + coef_q q_j with row coefficients")


@dataclass(frozen=True)
class Fit:
    """The definition's loss and SymPy's derivative, raw and fitted to the kernel shape."""

    loss: sp.Expr
    derivative: sp.Expr
    coefficients: dict[sp.Symbol, sp.Expr]
    row_loss: sp.Expr
    accumulators: tuple[Accumulator, ...]


def fit(definition: LossDefinition) -> Fit:
    """Differentiate ``definition`` for symbolic C and fit dL/dz_j to the kernel shape."""
    if definition.kind not in KINDS:
        raise RowLossError(f"{definition.name}: kind must be one of {KINDS}, got {definition.kind!r}")
    options = definition.option_symbols()
    scale = sp.sympify(definition.scale(**options))
    row = SymbolicRow(scale, definition.class_weights)
    loss = sp.sympify(definition.loss(row, **options))
    if definition.kind == "index" and loss.has(u):
        raise RowLossError(f"{definition.name}: an index-target loss reads teacher logits u")
    derivative = restrict_to_class(sp.diff(loss, z[j]).doit())
    translate = _Translator(scale)
    gradient = translate(derivative)
    if translate.accumulators:
        raise RowLossError(f"{definition.name}: the gradient reads sums over the row "
                           f"({', '.join(sp.sstr(a.term) for a in translate.accumulators)})")
    coefficients = {coef_p: sp.diff(gradient, p_j), coef_target: sp.diff(gradient, is_target),
                    coef_q: sp.diff(gradient, q_j)}
    rest = sp.expand(gradient - coefficients[coef_p] * p_j - coefficients[coef_target] * is_target
                     - coefficients[coef_q] * q_j)
    if sp.simplify(rest) != 0:
        raise RowLossError(f"{definition.name}: dL/dz_j has the term {sp.sstr(rest)}, which is "
                           "not coef_p p_j + coef_target [j = t] + coef_q q_j")
    element = {p_j, q_j, is_target, log_p, log_q, class_alpha, j}
    for symbol, coefficient in coefficients.items():
        _free_of(f"{definition.name}: {symbol}", coefficient, element)
    value = translate(loss)
    _free_of(f"{definition.name}: the row's loss", value, element)
    for accumulator in translate.accumulators:
        _free_of(f"{definition.name}: the row sum {accumulator.term}", accumulator.term,
                 {p_j, q_j, is_target, j, p_target})
    return Fit(loss, derivative, {k: v for k, v in coefficients.items() if v != 0}, value,
               tuple(translate.accumulators))


def kernel_spec(definition: LossDefinition) -> RowLossSpec:
    """The generic kernel spec of ``definition`` (proven by :mod:`gradsmith.derive.row_loss_proofs`)."""
    fitted = fit(definition)
    options = definition.option_symbols()
    scale = sp.sympify(definition.scale(**options))
    used = set().union(*(e.free_symbols for e in fitted.coefficients.values()),
                       fitted.row_loss.free_symbols)
    gathered = (target_logit,) if definition.kind == "index" else ()
    if definition.class_weights:
        gathered += (target_alpha,)
    row_values = []
    if lse_z in used:
        row_values.append((lse_z, logit_max + logit_log_sum_exp))
    if lse_u in used:
        row_values.append((lse_u, teacher_logit_max + teacher_logit_log_sum_exp))
    if used & {log_p_target, p_target, one_minus_p_target, log_p_target_ratio}:
        row_values.append((target_shifted, scale * target_logit - logit_max))
        row_values.append((log_p_target, target_shifted - logit_log_sum_exp))
    if p_target in used:
        row_values.append((p_target, sp.exp(log_p_target)))
    if log_p_target_ratio in used:
        # Before 1 - p_t and from the same expm1, so that the printed code takes the ratio
        # before the power: taken after it, its inputs stayed live across the float64 pow and
        # the CUDA kernel spilled.
        row_values.append((log_p_target_ratio, sp.Piecewise(
            (-1, sp.Eq(log_p_target, 0)), (-log_p_target / expm1(log_p_target), True))))
    if one_minus_p_target in used:
        row_values.append((one_minus_p_target, -expm1(log_p_target)))
    for symbol in (coef_p, coef_target, coef_q):
        if symbol in fitted.coefficients:
            row_values.append((symbol, grad_scale * fitted.coefficients[symbol]))
    element_values = [(shifted_p, scale * logit - logit_max),
                      (log_p, shifted_p - logit_log_sum_exp), (p_j, sp.exp(log_p))]
    dlogit = coef_p * p_j if coef_p in fitted.coefficients else sp.Integer(0)
    if definition.kind == "teacher":
        element_values += [(shifted_q, scale * teacher_logit - teacher_logit_max),
                           (log_q, shifted_q - teacher_logit_log_sum_exp), (q_j, sp.exp(log_q))]
        if coef_q in fitted.coefficients:
            dlogit += coef_q * q_j
    if definition.kind == "index" and coef_target not in fitted.coefficients:
        row_values.append((coef_target, sp.Integer(0)))
    accumulators = tuple(
        Accumulator(a.symbol, a.term.xreplace({sp.exp(log_p): p_j, sp.exp(log_q): q_j}))
        for a in fitted.accumulators
    )
    return RowLossSpec(
        name=definition.name, kind=definition.kind, class_weights=definition.class_weights,
        options=definition.options, scale=scale,
        normalizers=((logit, logit_max, logit_log_sum_exp),) + (
            ((teacher_logit, teacher_logit_max, teacher_logit_log_sum_exp),)
            if definition.kind == "teacher" else ()),
        scaled_logit=scale * logit, normalizer_term=NORMALIZER_TERM,
        normalizer_rescale=NORMALIZER_RESCALE, normalizer_log_sum=NORMALIZER_LOG_SUM,
        normalizer_merge=NORMALIZER_MERGE, normalizer_top_term=NORMALIZER_TOP_TERM,
        normalizer_rest_term=NORMALIZER_REST_TERM, normalizer_top_excess=NORMALIZER_TOP_EXCESS,
        normalizer_split_sum=NORMALIZER_SPLIT_SUM, gathered=gathered,
        gathered_defaults=tuple(GATHERED_DEFAULTS[g] for g in gathered),
        row_values=tuple(row_values), element_values=tuple(element_values), dlogit=dlogit,
        dlogit_at_target=dlogit + coef_target if definition.kind == "index" else None,
        accumulators=accumulators, final_values=((row_loss, fitted.row_loss),),
        reductions=definition.reductions, default_reduction=definition.default_reduction,
    )
