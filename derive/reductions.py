"""Reductions over rows and ignore_index, proven on an explicit batch (N = 3 rows, C = 3).

Row 1 carries ``ignore_index``: its mask m_1 = 0 removes it from the loss and from the
"mean" denominator, which for index targets is the sum of w_{t_n} over kept rows
(PyTorch's rule); probability targets have no ignore_index and "mean" divides by N.
z-loss under "mean" is a mean over the counted rows, whatever the class weights.
"""

from __future__ import annotations

from functools import cache

import sympy as sp
from gradsmith.derive.steps import Derivation, DerivationBuilder

ROWS, CLASSES = 3, 3
TARGETS = (0, None, 2)  # None: the row's target is ignore_index
z = sp.Matrix(ROWS, CLASSES, lambda n, c: sp.Symbol(f"z_{n}{c}", real=True))
e = sp.Matrix(ROWS, CLASSES, lambda n, c: sp.Symbol(f"e_{n}{c}", positive=True))
w = sp.symbols(f"w_0:{CLASSES}", positive=True)
g = sp.symbols(f"g_0:{ROWS}", real=True)
P = sp.Matrix(ROWS, CLASSES, lambda n, c: sp.Symbol(f"p_{n}{c}", positive=True))
Y = sp.Matrix(ROWS, CLASSES, lambda n, c: sp.Symbol(f"y_{n}{c}", nonnegative=True))
lam = sp.Symbol("lambda", nonnegative=True)
GRADIENT = r"\frac{\partial L}{\partial Z}"


def _log_normalizer(n: int) -> sp.Expr:
    return sp.log(sp.Add(*[sp.exp(z[n, c]) for c in range(CLASSES)]))


def _prepare(expr: sp.Basic) -> sp.Basic:
    """p_{nc} to its softmax, evaluate derivatives, then z_{nc} = log e_{nc} (so cancel decides)."""
    probs = {}
    for n in range(ROWS):
        total = sp.Add(*[sp.exp(z[n, c]) for c in range(CLASSES)])
        probs.update({P[n, c]: sp.exp(z[n, c]) / total for c in range(CLASSES)})
    change = {z[n, c]: sp.log(e[n, c]) for n in range(ROWS) for c in range(CLASSES)}
    expr = expr.xreplace(probs)
    expr = expr.applyfunc(lambda x: x.doit()) if isinstance(expr, sp.MatrixBase) else expr.doit()
    return expr.xreplace(change)


def _index_row_loss(n: int) -> sp.Expr:
    t = TARGETS[n]
    return w[t] * (_log_normalizer(n) - z[n, t]) if t is not None else sp.Integer(0)


def _kept(n: int) -> int:
    return 0 if TARGETS[n] is None else 1


def _index_row_gradient(n: int) -> sp.Matrix:
    t = TARGETS[n]
    if t is None:
        return sp.zeros(1, CLASSES)
    return w[t] * (P[n, :] - sp.eye(CLASSES)[t, :])


def _builder(name: str, loss: sp.Expr, shown: str, intro: str) -> DerivationBuilder:
    start = z.applyfunc(lambda v: sp.Derivative(loss, v))
    b = DerivationBuilder(name, GRADIENT, start, rule="differentiate the reduced loss",
                          classes=CLASSES, prepare=_prepare, shown=shown, intro=intro)
    b.then(start.applyfunc(lambda d: d.doit()), "chain rule (SymPy), row by row",
           shown=r"\left[\frac{\partial L}{\partial z_{nc}}\right]_{nc}\ "
                 r"\text{(SymPy's derivative, entry by entry)}")
    return b


@cache
def mean_with_ignore_index() -> Derivation:
    """mean = sum_n m_n w_{t_n} l_n / sum_n m_n w_{t_n}; ignored rows get a zero gradient."""
    denominator = sp.Add(*[_kept(n) * w[TARGETS[n]] for n in range(ROWS) if _kept(n)])
    loss = sp.Add(*[_index_row_loss(n) for n in range(ROWS)]) / denominator
    b = _builder(
        "mean over kept rows, ignore_index", loss,
        r"\frac{\partial}{\partial Z} \frac{\sum_n m_n w_{t_n} \ell_n}{\sum_n m_n w_{t_n}}",
        "Targets (0, ignore_index, 2): row 1 has mask m_1 = 0. "
        "With every row ignored the mean is 0/0, NaN, as in PyTorch.")
    rows = [_index_row_gradient(n) / denominator for n in range(ROWS)]
    b.then(sp.Matrix.vstack(*rows),
           "the proven row gradient w_t (p - onehot(t)), divided by the kept weight",
           shown=r"\left[\frac{m_n w_{t_n}}{\sum_m m_m w_{t_m}} (p_n - e_{t_n})\right]_n")
    return b.build()


@cache
def none_with_grad_output() -> Derivation:
    """reduction="none" with grad_output g: the gradient of sum_n g_n m_n l_n."""
    loss = sp.Add(*[g[n] * _index_row_loss(n) for n in range(ROWS)])
    b = _builder(
        "none with grad_output, ignore_index", loss,
        r"\frac{\partial}{\partial Z} \sum_n g_n m_n \ell_n",
        "reduction='none' returns the row losses; a caller's grad_output g scales each row. "
        "An ignored row stays zero whatever g_n is.")
    rows = [g[n] * _index_row_gradient(n) for n in range(ROWS)]
    b.then(sp.Matrix.vstack(*rows), "the proven row gradient, scaled by g_n",
           shown=r"\left[g_n m_n w_{t_n} (p_n - e_{t_n})\right]_n")
    return b.build()


@cache
def sum_reduction() -> Derivation:
    """reduction="sum": the gradient of sum_n m_n l_n, no denominator."""
    loss = sp.Add(*[_index_row_loss(n) for n in range(ROWS)])
    b = _builder("sum, ignore_index", loss, r"\frac{\partial}{\partial Z} \sum_n m_n \ell_n",
                 "reduction='sum' adds the kept rows.")
    b.then(sp.Matrix.vstack(*[_index_row_gradient(n) for n in range(ROWS)]),
           "the proven row gradient", shown=r"\left[m_n w_{t_n} (p_n - e_{t_n})\right]_n")
    return b.build()


@cache
def mean_probability_targets() -> Derivation:
    """Probability targets: mean divides by N; row gradient p_n sum_k w_k y_nk - w * y_n."""
    rows = []
    for n in range(ROWS):
        log_probs = [z[n, c] - _log_normalizer(n) for c in range(CLASSES)]
        rows.append(-sp.Add(*[w[c] * Y[n, c] * log_probs[c] for c in range(CLASSES)]))
    loss = sp.Add(*rows) / ROWS
    b = _builder("mean, probability targets", loss,
                 r"\frac{\partial}{\partial Z} \frac{1}{N} \sum_n \ell_n",
                 "With probability targets (weighted per class) the mean divides by N.")
    gradient = sp.Matrix(ROWS, CLASSES, lambda n, c: (
        P[n, c] * sp.Add(*[w[k] * Y[n, k] for k in range(CLASSES)]) - w[c] * Y[n, c]) / ROWS)
    b.then(gradient, "the proven row gradient, divided by N",
           shown=r"\left[\frac{1}{N}\left(p_n \sum_k w_k y_{nk} - w \odot y_n\right)\right]_n")
    return b.build()


@cache
def mean_z_loss_with_weights() -> Derivation:
    """mean with z-loss and weights: sum_n m_n w_t l_n / sum m_n w_t + lambda sum_n m_n lse_n^2 /
    sum_n m_n; the z-term does not scale with the weights."""
    kept = [n for n in range(ROWS) if _kept(n)]
    denominator = sp.Add(*[w[TARGETS[n]] for n in kept])
    loss = (sp.Add(*[_index_row_loss(n) for n in range(ROWS)]) / denominator
            + lam * sp.Add(*[_log_normalizer(n) ** 2 for n in kept]) / len(kept))
    b = _builder(
        "mean z-loss over counted rows, class weights", loss,
        r"\frac{\partial}{\partial Z} \left(\frac{\sum_n m_n w_{t_n} \ell_n}{\sum_n m_n w_{t_n}}"
        r" + \lambda \frac{\sum_n m_n \mathrm{lse}_n^2}{\sum_n m_n}\right)",
        "z-loss under 'mean' divides lambda lse^2 by the number of counted rows, not by the "
        "weights' sum, so that scaling every class weight leaves its strength unchanged.")
    rows = []
    for n in range(ROWS):
        if not _kept(n):
            rows.append(sp.zeros(1, CLASSES))
            continue
        z_term = 2 * lam * _log_normalizer(n) * P[n, :] / len(kept)
        rows.append(_index_row_gradient(n) / denominator + z_term)
    b.then(sp.Matrix.vstack(*rows),
           "the proven row gradients: w_t (p - onehot(t)) over the kept weight, "
           "2 lambda lse p over the counted rows",
           shown=r"\left[\frac{m_n w_{t_n}}{\sum_m m_m w_{t_m}} (p_n - e_{t_n})"
                 r" + \frac{2 \lambda m_n \mathrm{lse}_n}{\sum_m m_m} p_n\right]_n")
    return b.build()


def reduction_derivations() -> tuple[Derivation, ...]:
    return (mean_with_ignore_index(), sum_reduction(), none_with_grad_output(),
            mean_probability_targets(), mean_z_loss_with_weights())
