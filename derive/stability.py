"""The identities the kernels rely on for numerical stability.

Shift invariance lets a kernel subtract the row maximum; the log-sum-exp form of the loss
never exponentiates a positive number; the online normalizer keeps that true while the
maximum is still being found, and merges partial rows; exp2 is what fast hardware offers.
"""

from __future__ import annotations

from functools import cache

import sympy as sp
from gradsmith.derive.notation import (
    C,
    class_index,
    expand_notation,
    i,
    j,
    normalizer,
    p,
    softmax,
    t,
    z,
)
from gradsmith.derive.steps import Derivation, DerivationBuilder

shift = sp.Symbol("c", real=True)
pivot = sp.Symbol("m", real=True)


def _builder(name: str, lhs: str, start: sp.Basic, **kwargs) -> DerivationBuilder:
    kwargs.setdefault("class_symbol", C)
    kwargs.setdefault("prepare", expand_notation)
    return DerivationBuilder(name, lhs, start, **kwargs)


def _sum(term: sp.Expr, count: sp.Expr = C, dummy: sp.Symbol = j) -> sp.Sum:
    return sp.Sum(term, (dummy, 0, count - 1))


@cache
def shift_invariance() -> Derivation:
    """p_i(z - c) = p_i(z) for every real c (so c = max_j z_j is allowed)."""
    b = _builder("shift invariance p(z - c) = p(z)", r"p_i(z - c)",
                 sp.exp(z[i] - shift) / _sum(sp.exp(z[j] - shift)), rule="definition of p",
                 intro="Subtracting any constant c from every logit leaves the softmax unchanged.")
    b.then(sp.exp(-shift) * sp.exp(z[i]) / _sum(sp.exp(-shift) * sp.exp(z[j])),
           "exp of a sum is a product of exps")
    b.then(sp.exp(-shift) * sp.exp(z[i]) / (sp.exp(-shift) * normalizer()),
           "a constant factor leaves the sum")
    b.then(softmax(i), "cancel exp(-c)")
    b.then(p[i], "definition of p_i")
    return b.build()


@cache
def log_sum_exp_loss() -> Derivation:
    """L = -log p_t = m + log sum_j exp(z_j - m) - z_t for every real m."""
    b = _builder("L = m + log sum_j exp(z_j - m) - z_t", "L", -sp.log(p[t]),
                 rule="definition (index target)", assumptions=[class_index(t)],
                 intro="With m = max_j z_j every exponent is at most 0 and one term equals 1.")
    b.then(sp.log(normalizer()) - z[t], "log of a quotient")
    b.then(sp.log(sp.exp(pivot) * _sum(sp.exp(z[j] - pivot))) - z[t],
           "exp(z_j) = exp(m) exp(z_j - m), a constant factor leaves the sum")
    b.then(pivot + sp.log(_sum(sp.exp(z[j] - pivot))) - z[t], "log of a product")
    return b.build()


# The online normalizer: values v_0..v_{n-1} seen so far, then one more value v_n.
n = sp.Symbol("n", integer=True, positive=True)
v = sp.IndexedBase("v", real=True)
old_max, new_max = sp.symbols("m m'", real=True)
running_sum = sp.Symbol("d", positive=True)


@cache
def online_normalizer() -> Derivation:
    """d' = d exp(m - m') + exp(v_n - m'), where d = sum_{j<n} exp(v_j - m)."""
    definition = {running_sum: _sum(sp.exp(v[j] - old_max), n)}
    b = _builder(
        "online normalizer d' = d exp(m - m') + exp(x - m')", "d'",
        _sum(sp.exp(v[j] - new_max), n + 1), rule="definition at the new maximum m'",
        class_symbol=n, prepare=lambda e: e.xreplace(definition),
        intro=("A running maximum m and sum d = sum_{j<n} exp(v_j - m) absorb one more value "
               "v_n; the new maximum m' = max(m, v_n) may be any real number for the identity."),
    )
    b.then(_sum(sp.exp(v[j] - new_max), n) + sp.exp(v[n] - new_max), "split off the last term")
    b.then(sp.exp(old_max - new_max) * _sum(sp.exp(v[j] - old_max), n) + sp.exp(v[n] - new_max),
           "exp(v_j - m') = exp(m - m') exp(v_j - m), a constant factor leaves the sum")
    b.then(running_sum * sp.exp(old_max - new_max) + sp.exp(v[n] - new_max),
           "definition of d")
    return b.build()


@cache
def online_merge() -> Derivation:
    """Two partial states (m_a, d_a), (m_b, d_b) of disjoint parts of a row merge exactly."""
    a_vals = sp.symbols("a_0:3", real=True)
    b_vals = sp.symbols("b_0:2", real=True)
    m_a, m_b, m = sp.symbols("m_a m_b m", real=True)
    d_a, d_b = sp.symbols("d_a d_b", positive=True)
    definition = {
        d_a: sp.Add(*[sp.exp(x - m_a) for x in a_vals]),
        d_b: sp.Add(*[sp.exp(x - m_b) for x in b_vals]),
    }
    whole = sp.Add(*[sp.exp(x - m) for x in a_vals + b_vals])
    b = DerivationBuilder(
        "merge of two online states", "d", whole, rule="definition over both parts",
        prepare=lambda e: e.xreplace(definition), classes="-",
        intro=("Parts A (3 values) and B (2 values) of a row were reduced apart to (m_a, d_a) "
               "and (m_b, d_b); with m = max(m_a, m_b), any m for the identity:"),
    )
    b.then(sp.exp(m_a - m) * definition[d_a] + sp.exp(m_b - m) * definition[d_b],
           "exp(x - m) = exp(m_a - m) exp(x - m_a), and likewise for B")
    b.then(d_a * sp.exp(m_a - m) + d_b * sp.exp(m_b - m), "definition of d_a and d_b")
    return b.build()


@cache
def exp2_rewrite() -> Derivation:
    """exp(x) = 2^(x log2 e), the form evaluated by exp2 instructions."""
    x = sp.Symbol("x", real=True)
    b = DerivationBuilder("exp(x) = 2^(x log2 e)", r"e^{x}", sp.exp(x), classes="-",
                          intro="Hardware evaluates powers of two; log2 e = 1/log 2.")
    b.then(sp.Pow(sp.exp(sp.log(2)), x / sp.log(2), evaluate=False),
           "x = (x / log 2) log 2, a power of a power", shown=r"\left(e^{\log 2}\right)^{x/\log 2}")
    b.then(2 ** (x / sp.log(2)), "e^{log 2} = 2", shown=r"2^{x \log_2 e}")
    return b.build()


def exp_range_reduction() -> Derivation:
    """exp(x) = 2^k exp(x - k log 2) for every integer k: the kernels' exp reduces its argument."""
    x = sp.Symbol("x", real=True)
    k = sp.Symbol("k", integer=True)
    r = x - k * sp.log(2)
    b = DerivationBuilder(
        "exp(x) = 2^k exp(x - k log 2)", r"e^{x}", sp.exp(x), classes="-",
        intro="The kernels pick k as the integer nearest to x log2 e, so |r| <= log(2)/2.",
    )
    b.then(sp.exp(sp.Add(k * sp.log(2), r, evaluate=False), evaluate=False),
           "x = k log 2 + r with r = x - k log 2", shown=r"e^{k \log 2 + r}")
    b.then(2**k * sp.exp(r), "exp of a sum; e^{k log 2} = 2^k", shown=r"2^{k} e^{r}")
    return b.build()


def stability_derivations() -> tuple[Derivation, ...]:
    return (shift_invariance(), log_sum_exp_loss(), online_normalizer(), online_merge(),
            exp2_rewrite(), exp_range_reduction())
