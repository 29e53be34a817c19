"""Cross-entropy over a vocabulary split across ranks: merged row statistics give the same loss
and gradient as one process.

Rank r holds a contiguous shard of the classes.  At a common pivot M (the all-reduced maximum;
any real M for the identity), each rank sums over its shard the kernel spec's statistics
``sum_exp``, ``weight_sum`` and ``shifted_sum``, plus the target logit where it owns the target
(0 elsewhere).  These are sums over disjoint parts of the row, so one all-reduce SUM gives the
whole row's statistics, and the spec's row values and per-element gradient follow from them
on every rank.  Checked here for C = 5 split 2 + 3, with every option symbolic.
"""

from __future__ import annotations

from functools import cache

import sympy as sp
from gradsmith.derive import kernel_spec as ks
from gradsmith.derive.check import Verdict
from gradsmith.derive.steps import Derivation, DerivationBuilder

SHARDS = ((0, 1), (2, 3, 4))
CLASSES = 5
TARGET = 3  # owned by the second shard
MERGED = (ks.sum_exp, ks.weight_sum, ks.shifted_sum, ks.target_logit)
pivot = sp.Symbol("M", real=True)


def shard_statistics(spec: ks.KernelSpec, z, w, y, shard: tuple[int, ...],
                     target: int | None) -> dict[sp.Symbol, sp.Expr]:
    """One rank's statistics over its ``shard`` at the common pivot M (the all-reduced max)."""
    transformed = {j: spec.transform.subs(ks.logit, z[j]) for j in shard}
    coefficients = {
        j: spec.linear_coefficient.subs({ks.weight: w[j], ks.target_prob: y[j],
                                         ks.num_classes: len(z)})
        for j in shard
    }
    return {
        ks.sum_exp: sp.Add(*[sp.exp(transformed[j] - pivot) for j in shard]),
        ks.weight_sum: sp.Add(*coefficients.values()),
        ks.shifted_sum: sp.Add(*[coefficients[j] * (transformed[j] - pivot) for j in shard]),
        ks.target_logit: z[target] if target in shard else sp.Integer(0),
    }


def merged_statistics(spec: ks.KernelSpec, z, w, y, target: int | None) -> dict:
    """The all-reduce SUM over the shards of every rank's statistics."""
    per_rank = [shard_statistics(spec, z, w, y, shard, target) for shard in SHARDS]
    return {symbol: sp.Add(*[stats[symbol] for stats in per_rank]) for symbol in MERGED}


def _symbols(spec: ks.KernelSpec):
    z = sp.symbols(f"z_0:{CLASSES}", real=True)
    w = sp.symbols(f"w_0:{CLASSES}", positive=True) if spec.weighted else (sp.Integer(1),) * CLASSES
    y = (sp.symbols(f"y_0:{CLASSES}", nonnegative=True) if spec.target_kind == "probs"
         else (0,) * CLASSES)
    target = TARGET if spec.target_kind == "index" else None
    return z, w, y, target


def _row_values(spec: ks.KernelSpec, merged: dict, w, target: int | None) -> dict:
    state = {**merged, ks.row_max: pivot, ks.num_classes: CLASSES}
    if target is not None:
        state[ks.target_weight] = w[target]
    values: dict = {}
    for symbol, expr in spec.row_values:
        values[symbol] = expr.subs(values).subs(state)
    return {**state, **values}


def verify_merge(spec: ks.KernelSpec) -> list[tuple[str, Verdict]]:
    """The spec's loss and every element's gradient from the merged statistics equal the
    definition's loss and SymPy's derivative of it (numerically at 40 digits)."""
    z, w, y, target = _symbols(spec)
    definition = ks._definition_loss(spec, z, w, y, target)
    values = _row_values(spec, merged_statistics(spec, z, w, y, target), w, target)
    results = [(f"{spec.name}: merged loss",
                ks._check(values[ks.loss], definition, f"{spec.name} merged loss"))]
    for j, zj in enumerate(z):
        element = {ks.logit: zj, ks.weight: w[j], ks.target_prob: y[j],
                   ks.shifted: spec.transform.subs(ks.logit, zj) - pivot}
        formula = spec.dlogit_target if j == target else spec.dlogit
        local = formula.subs(element).subs(values).subs(element)
        expected = ks.grad_scale * sp.diff(definition, zj)
        results.append((f"{spec.name}: merged dlogit_{j}",
                        ks._check(local, expected, f"{spec.name} merged dL/dz_{j}")))
    return results


def verify_all_merges() -> list[tuple[str, Verdict]]:
    """:func:`verify_merge` for every variant of the kernel spec."""
    return [result for spec in ks.all_specs() for result in verify_merge(spec)]


# The derivation as shown: two ranks, shards A = {0, 1} and B = {2, 3, 4}, target t = 3 in B.
S_A, S_B = sp.symbols("S_A S_B", positive=True)
W_A, W_B = sp.symbols("W_A W_B", real=True)
B_A, B_B = sp.symbols("B_A B_B", real=True)
zt_A, zt_B = sp.symbols("zhat_A zhat_B", real=True)
_LATEX = {S_A: "S_A", S_B: "S_B", W_A: "W_A", W_B: "W_B", B_A: "B_A", B_B: "B_B",
          zt_A: r"\hat z_{t,A}", zt_B: r"\hat z_{t,B}", ks.label_smoothing: r"\varepsilon",
          ks.lse_square_scale: r"\lambda", ks.grad_scale: "g"}


def _shown_spec() -> ks.KernelSpec:
    return ks.kernel_spec("index", True, False)


def _shard_definitions(spec: ks.KernelSpec) -> dict[sp.Symbol, sp.Expr]:
    z, w, y, target = _symbols(spec)
    a, b = (shard_statistics(spec, z, w, y, shard, target) for shard in SHARDS)
    return {S_A: a[ks.sum_exp], S_B: b[ks.sum_exp], W_A: a[ks.weight_sum], W_B: b[ks.weight_sum],
            B_A: a[ks.shifted_sum], B_B: b[ks.shifted_sum], zt_A: a[ks.target_logit],
            zt_B: b[ks.target_logit]}


def _shown_merged() -> dict[sp.Symbol, sp.Expr]:
    return {ks.sum_exp: S_A + S_B, ks.weight_sum: W_A + W_B, ks.shifted_sum: B_A + B_B,
            ks.target_logit: zt_A + zt_B}


@cache
def merged_loss() -> Derivation:
    """L of one process = the spec's loss at the all-reduced statistics of two ranks."""
    spec = _shown_spec()
    z, w, y, target = _symbols(spec)
    definitions = _shard_definitions(spec)
    values = _row_values(spec, _shown_merged(), w, target)
    b = DerivationBuilder(
        "vocab-parallel merge: same loss", "L", ks._definition_loss(spec, z, w, y, target),
        rule="PyTorch's definition on the whole row (one process)", classes=CLASSES,
        shown=(r"(1 - \varepsilon) w_t (\operatorname{lse} - z_t) + \frac{\varepsilon}{5} "
               r"\sum_{j=0}^{4} w_j (\operatorname{lse} - z_j) + \lambda \operatorname{lse}^2, "
               r"\quad \operatorname{lse} = \log \sum_{j=0}^{4} e^{z_j}"),
        prepare=lambda e: e.xreplace(definitions), symbolic=False,
        intro=("Class weights w, label smoothing epsilon and z-loss lambda, C = 5 classes on two "
               "ranks: A holds {0, 1}, B holds {2, 3, 4}, the target t = 3 is on B.  Each rank "
               "sums at the all-reduced maximum M: S = sum_j exp(z_j - M), W = sum_j w_j, "
               "B = sum_j w_j (z_j - M), and the target logit zhat_t where it owns t (0 "
               "elsewhere).  One all-reduce SUM merges them; the kernel spec's loss follows."),
    )
    b.then(values[ks.loss], "the spec's row loss at the summed statistics (S_A + S_B, ...)",
           shown=sp.latex(values[ks.loss], symbol_names=_LATEX))
    return b.build()


@cache
def merged_gradient() -> Derivation:
    """dL/dz_1 of one process = rank A's local gradient from the merged statistics."""
    spec = _shown_spec()
    z, w, y, target = _symbols(spec)
    definitions = _shard_definitions(spec)
    values = _row_values(spec, _shown_merged(), w, target)
    element = {ks.logit: z[1], ks.weight: w[1], ks.shifted: z[1] - pivot}
    local = spec.dlogit.subs(element).subs(values).subs(element)
    start = ks.grad_scale * sp.Derivative(ks._definition_loss(spec, z, w, y, target), z[1])
    b = DerivationBuilder(
        "vocab-parallel merge: same gradient", r"g \frac{\partial L}{\partial z_1}", start,
        rule="SymPy's derivative of the one-process loss", classes=CLASSES,
        shown=r"g \, \frac{\partial}{\partial z_1} L(z_0, \dots, z_4)",
        prepare=lambda e: e.xreplace(definitions), symbolic=False,
        intro=("Rank A computes the gradient of its own logit z_1 from its local value and the "
               "merged statistics alone: the backward needs no further communication."),
    )
    b.then(local, "the spec's dlogit at the merged row values (rank A, no communication)",
           shown=sp.latex(local, symbol_names=_LATEX))
    return b.build()
