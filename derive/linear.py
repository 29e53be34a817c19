"""The linear classifier z = W x + b: gradients of W, b and x, one sample and a mini-batch.

Proven for small explicit sizes (C = 3 classes, D = 2 features, N = 2 samples): SymPy
differentiates the loss of ``W x + b`` entry by entry, and each step is checked against it.
The probabilities are shown as ``p_c``, standing for the softmax of ``W x + b``.
"""

from __future__ import annotations

from functools import cache

import sympy as sp
from gradsmith.derive.check import Assumption
from gradsmith.derive.steps import Derivation, DerivationBuilder

NUM_CLASSES, NUM_FEATURES, NUM_SAMPLES = 3, 2, 2

# Symbolic shapes of the batch form that the demo evaluates.
N = sp.Symbol("N", integer=True, positive=True)
C = sp.Symbol("C", integer=True, positive=True)
D = sp.Symbol("D", integer=True, positive=True)
dZ = sp.MatrixSymbol("dZ", N, C)
X = sp.MatrixSymbol("X", N, D)


def _matrix(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda r, c: sp.Symbol(f"{name}_{r}{c}", real=True))


def _column(name: str, rows: int, **assumptions) -> sp.Matrix:
    return sp.Matrix([sp.Symbol(f"{name}_{r}", **({"real": True} | assumptions))
                      for r in range(rows)])


W = _matrix("W", NUM_CLASSES, NUM_FEATURES)
b = _column("b", NUM_CLASSES)


def _softmax(logits: sp.Matrix) -> sp.Matrix:
    total = sp.Add(*[sp.exp(v) for v in logits])
    return logits.applyfunc(lambda v: sp.exp(v) / total)


def _loss(logits: sp.Matrix, target: sp.Matrix) -> sp.Expr:
    probs = _softmax(logits)
    return -sp.Add(*[yk * sp.log(pk) for yk, pk in zip(target, probs, strict=True)])


def _sum_to_one(targets: list[sp.Matrix]) -> Assumption:
    """Each target row sums to one, applied by eliminating its last entry."""
    replacements = {y[-1]: 1 - sp.Add(*y[:-1]) for y in targets}
    statement = sp.And(*[sp.Eq(sp.Add(*y), 1) for y in targets])
    return Assumption(name="targets sum to one", statement=statement, replacements=replacements)


def _prepare(samples: list[tuple[sp.Matrix, sp.Matrix, sp.Matrix]]):
    """Replace the shown p_{n,c} by the softmax of W x_n + b, then evaluate derivatives."""
    rule = {}
    for x, _, p in samples:
        rule.update(dict(zip(p, _softmax(W * x + b), strict=True)))

    def prepare(expr: sp.Basic) -> sp.Basic:
        return expr.xreplace(rule)

    return prepare


def _sample(n: int | None) -> tuple[sp.Matrix, sp.Matrix, sp.Matrix]:
    suffix = "" if n is None else f"{n}"
    x = _column(f"x{suffix}", NUM_FEATURES)
    y = _column(f"y{suffix}", NUM_CLASSES)
    p = _column(f"p{suffix}", NUM_CLASSES, positive=True)
    return x, y, p


def _jacobian(expr: sp.Expr, variables: sp.Matrix) -> sp.Matrix:
    return variables.applyfunc(lambda v: sp.Derivative(expr, v))


@cache
def single_sample() -> tuple[Derivation, Derivation, Derivation]:
    """dL/dW = (p - y) x^T, dL/db = p - y, dL/dx = W^T (p - y)."""
    x, y, p = _sample(None)
    logits = W * x + b
    loss = _loss(logits, y)
    assume = [_sum_to_one([y])]
    prepare = _prepare([(x, y, p)])
    zs = sp.Matrix(sp.symbols(f"z_0:{NUM_CLASSES}", real=True))
    dl_dz = _jacobian(_loss(zs, y), zs).applyfunc(lambda e: e.doit().subs(dict(zip(zs, logits))))
    results = []
    for name, variable, lhs, closed in (
        ("dL/dW = (p - y) x^T", W, r"\frac{\partial L}{\partial W}", (p - y) * x.T),
        ("dL/db = p - y", b, r"\frac{\partial L}{\partial b}", p - y),
        ("dL/dx = W^T (p - y)", x, r"\frac{\partial L}{\partial x}", W.T * (p - y)),
    ):
        chain = variable.applyfunc(
            lambda v: sp.Add(*[dl_dz[c] * sp.diff(logits[c], v) for c in range(NUM_CLASSES)])
        )
        builder = DerivationBuilder(
            name, lhs, _jacobian(loss, variable), rule="differentiate L(Wx + b)",
            classes=NUM_CLASSES, prepare=prepare,
            shown=lhs.replace("L}{", "L(Wx+b)}{"),
        )
        builder.then(chain, "chain rule through z = Wx + b",
                     shown=r"\sum_c \frac{\partial L}{\partial z_c}"
                           + lhs.replace(r"\partial L", r"\partial z_c"))
        builder.then(closed, "the proven dL/dz = p - y; derivative of Wx + b",
                     assumptions=assume)
        results.append(builder.build())
    return tuple(results)


@cache
def _batch_samples() -> list[tuple[sp.Matrix, sp.Matrix, sp.Matrix]]:
    return [_sample(n) for n in range(NUM_SAMPLES)]


def _rows(column_of: int) -> sp.Matrix:
    return sp.Matrix.hstack(*[s[column_of] for s in _batch_samples()]).T


def batch_matrices() -> dict[str, sp.Matrix]:
    """The explicit batch: X (N x D), Y and P (N x C), rows are samples."""
    return {"X": _rows(0), "Y": _rows(1), "P": _rows(2)}


@cache
def batch() -> tuple[Derivation, Derivation, Derivation]:
    """Mean loss over N samples: dZ = (P - Y)/N, dW = (1/N)(P - Y)^T X, db = mean of p_n - y_n."""
    samples = _batch_samples()
    mean_loss = sp.Add(*[_loss(W * x + b, y) for x, y, _ in samples]) / NUM_SAMPLES
    assume = [_sum_to_one([y for _, y, _ in samples])]
    prepare = _prepare(samples)
    m = batch_matrices()
    zs = sp.Matrix(NUM_SAMPLES, NUM_CLASSES, lambda n, c: sp.Symbol(f"z_{n}{c}", real=True))
    mean_of_z = sp.Add(*[_loss(zs[n, :].T, y) for n, (_, y, _) in enumerate(samples)])
    mean_of_z /= NUM_SAMPLES
    dz = zs.applyfunc(lambda v: sp.Derivative(mean_of_z, v))
    probs_of_z = {}
    for n, (_, _, p) in enumerate(samples):
        probs_of_z.update(dict(zip(p, _softmax(zs[n, :].T), strict=True)))
    per_logit = DerivationBuilder(
        "dZ = (P - Y)/N", r"\frac{\partial \bar L}{\partial Z}", dz, rule="differentiate the mean",
        classes=NUM_CLASSES, prepare=lambda e: e.xreplace(probs_of_z),
        shown=r"\frac{\partial}{\partial Z} \frac{1}{N}\sum_n L_n",
    )
    per_logit.then((m["P"] - m["Y"]) / NUM_SAMPLES,
                   "linearity; the proven dL_n/dz_n = p_n - y_n", assumptions=assume)
    results = [per_logit.build()]
    sums = {
        "W": sp.Add(*[(p - y) * x.T for x, y, p in samples]) / NUM_SAMPLES,
        "b": sp.Add(*[p - y for _, y, p in samples]) / NUM_SAMPLES,
    }
    closed = {
        "W": (m["P"] - m["Y"]).T * m["X"] / NUM_SAMPLES,
        "b": (m["P"] - m["Y"]).T * sp.ones(NUM_SAMPLES, 1) / NUM_SAMPLES,
    }
    for key, variable, name, form in (
        ("W", W, "dW = (1/N) (P - Y)^T X", r"\frac{1}{N} (P - Y)^{\mathsf T} X"),
        ("b", b, "db = (1/N) sum_n (p_n - y_n)", r"\frac{1}{N} (P - Y)^{\mathsf T} \mathbf 1"),
    ):
        lhs = rf"\frac{{\partial \bar L}}{{\partial {key}}}"
        builder = DerivationBuilder(
            name, lhs, _jacobian(mean_loss, variable), rule="differentiate the mean loss",
            classes=NUM_CLASSES, prepare=prepare,
            shown=rf"\frac{{\partial}}{{\partial {key}}} \frac{{1}}{{N}}\sum_n L_n",
        )
        builder.then(sums[key], "linearity; the single-sample gradient", assumptions=assume,
                     shown=(r"\frac{1}{N}\sum_n (p_n - y_n)"
                            + (r" x_n^{\mathsf T}" if key == "W" else "")))
        builder.then(closed[key], "rows of P, Y, X are the samples", shown=form)
        results.append(builder.build())
    return tuple(results)


def batch_parameter_gradients() -> dict[str, sp.MatrixExpr]:
    """dW and db of the mean loss from the per-logit gradient dZ (N x C) and the inputs X (N x D).

    ``dZ`` is what the kernels return (the gradient of the mean loss w.r.t. the logits).
    ``db`` contains ``OneMatrix(N, 1)``, so evaluate with the shapes bound, for instance
    ``sympy.lambdify((dZ, X, N), expr)``.  Proven by :func:`verify_batch_parameter_gradients`.
    """
    return {"dW": dZ.T * X, "db": dZ.T * sp.OneMatrix(N, 1)}


@cache
def verify_batch_parameter_gradients() -> Derivation:
    """Evaluate the MatrixSymbol forms at the explicit batch and match the proven dW, db."""
    m = batch_matrices()
    dz_claim, dw, db = batch()
    sizes = {N: NUM_SAMPLES, C: NUM_CLASSES, D: NUM_FEATURES}
    forms = batch_parameter_gradients()
    explicit = {dZ.subs(sizes): sp.ImmutableMatrix(dz_claim.result),
                X.subs(sizes): sp.ImmutableMatrix(m["X"])}

    def evaluate(expr: sp.MatrixExpr) -> sp.Matrix:
        return sp.Matrix(expr.subs(sizes).subs(explicit).as_explicit())

    stacked = sp.Matrix.hstack(dw.result, db.result)
    builder = DerivationBuilder(
        "dW = dZ^T X, db = dZ^T 1", r"\left[\frac{\partial \bar L}{\partial W},"
        r"\frac{\partial \bar L}{\partial b}\right]", stacked, rule="the proven batch gradients",
        classes=NUM_CLASSES, prepare=_prepare(_batch_samples()),
    )
    builder.then(sp.Matrix.hstack(evaluate(forms["dW"]), evaluate(forms["db"])),
                 "dZ = (P - Y)/N", shown=r"\left[dZ^{\mathsf T} X,\ dZ^{\mathsf T}\mathbf 1\right]")
    return builder.build()


def linear_derivations() -> tuple[Derivation, ...]:
    return (*single_sample(), *batch(), verify_batch_parameter_gradients())
