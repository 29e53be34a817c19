"""Checking an equality before it is shown: symbolically where SymPy decides it, else numerically.

The numeric method evaluates both sides at random points with mpmath at 40 significant
digits, for several concrete numbers of classes when C is symbolic, and needs agreement to
within 1e-30 relative.  A counterexample rejects the claim; nothing is shown unchecked.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import mpmath
import sympy as sp
from sympy.codegen.cfunctions import expm1

NUMERIC_DIGITS = 40
NUMERIC_TOLERANCE = mpmath.mpf("1e-30")
NUMERIC_POINTS = 6
NUMERIC_CLASS_COUNTS = (1, 2, 3, 5, 8)

Sampler = Callable[[dict, random.Random], dict]


class ProofError(AssertionError):
    """A claimed equality does not hold (or could not be checked); the message names the step."""


@dataclass(frozen=True)
class Assumption:
    """An explicit hypothesis a result depends on.

    ``replacements`` are applied before the symbolic check (for instance ``Sum(y_k) -> 1``);
    ``sample`` adjusts a random point so that it satisfies the hypothesis for the numeric check.
    """

    name: str
    statement: sp.Basic
    replacements: Mapping[sp.Basic, sp.Basic] = field(default_factory=dict)
    sample: Sampler | None = None

    def __str__(self) -> str:
        return f"{self.name}: {sp.sstr(self.statement)}"


@dataclass(frozen=True)
class Verdict:
    method: str  # "symbolic" or "numeric"
    detail: str


def apply_assumptions(expr: sp.Basic, assumptions: Iterable[Assumption]) -> sp.Basic:
    for assumption in assumptions:
        if assumption.replacements:
            expr = expr.subs(dict(assumption.replacements))
    return expr


def _symbolically_zero(difference: sp.Expr) -> bool:
    for simplifier in (lambda e: e, sp.cancel, sp.expand, sp.together, sp.simplify):
        try:
            if simplifier(difference) == 0:
                return True
        except Exception:  # noqa: BLE001, S112 - a broken simplifier leaves the numeric check
            continue
    return False


def _random_value(atom: sp.Basic, rng: random.Random) -> mpmath.mpf:
    if atom.is_integer:
        return mpmath.mpf(rng.randint(1 if atom.is_positive else 0, 3))
    low = 0.05 if atom.is_positive else (0.0 if atom.is_nonnegative else -3.0)
    return mpmath.mpf(rng.uniform(low, 3.0))


def _index_symbols(exprs, class_symbol) -> list[sp.Symbol]:
    """Free integer symbols other than C: class indices such as i or t, chosen before doit()."""
    free = set().union(*(e.free_symbols for e in exprs))
    return sorted(
        (s for s in free if isinstance(s, sp.Symbol) and s.is_integer and s != class_symbol),
        key=sp.default_sort_key,
    )


def _numeric_points(expr_pair, class_symbol, class_counts, points, rng):
    """Yield (C, left, right) per random point, with C and the class indices made concrete.

    An index must be fixed before the sums are expanded, or ``z[i]`` would be sampled apart
    from the ``z[0], z[1], ...`` it stands for.
    """
    indices = _index_symbols(expr_pair, class_symbol)
    counts = tuple(class_counts) if class_symbol is not None else (None,)
    for count in counts:
        fixed = expr_pair
        if count is not None:
            fixed = tuple(side.subs(class_symbol, count) for side in expr_pair)
        if not indices:
            evaluated = tuple(side.doit() for side in fixed)
            for _ in range(points):
                yield count, evaluated
            continue
        for _ in range(points):
            top = (count - 1) if count is not None else 3
            choice = {}
            for s in indices:
                low = 1 if s.is_positive else 0
                choice[s] = rng.randint(low, max(top, low))
            yield count, tuple(side.subs(choice).doit() for side in fixed)


def _atoms(expr: sp.Basic) -> set:
    """The quantities to sample: indexed entries and free scalar symbols, not IndexedBase labels."""
    indexed = expr.atoms(sp.Indexed)
    labels = {entry.base.label for entry in indexed}
    return indexed | {s for s in expr.free_symbols if isinstance(s, sp.Symbol) and s not in labels}


def numerically_equal(
    lhs: sp.Expr,
    rhs: sp.Expr,
    *,
    class_symbol: sp.Symbol | None = None,
    class_counts: Iterable[int] = NUMERIC_CLASS_COUNTS,
    assumptions: Iterable[Assumption] = (),
    points: int = NUMERIC_POINTS,
    seed: int = 2024,
) -> tuple[bool, str]:
    """Evaluate both sides at random points at high precision; return (holds, detail)."""
    rng = random.Random(seed)
    assumptions = tuple(assumptions)
    checked = 0
    with mpmath.workdps(NUMERIC_DIGITS):
        cases = _numeric_points((lhs, rhs), class_symbol, tuple(class_counts), points, rng)
        for count, (left, right) in cases:
            atoms = sorted(_atoms(left) | _atoms(right), key=sp.default_sort_key)
            values = {a: _random_value(a, rng) for a in atoms}
            if count is not None and class_symbol is not None:
                values["__C__"] = count
            for assumption in assumptions:
                if assumption.sample is not None:
                    values = assumption.sample(values, rng)
            values.pop("__C__", None)
            subs = {a: sp.Float(str(v), NUMERIC_DIGITS) for a, v in values.items()}
            da = sp.N(left.xreplace(subs), NUMERIC_DIGITS)
            db = sp.N(right.xreplace(subs), NUMERIC_DIGITS)
            if not (da.is_number and db.is_number):
                return False, f"could not evaluate numerically (left {da}, right {db})"
            da, db = mpmath.mpmathify(da), mpmath.mpmathify(db)
            if abs(da - db) > NUMERIC_TOLERANCE * (1 + abs(da)):
                where = f" at C={count}" if count is not None else ""
                return False, f"counterexample{where}: {sp.sstr(subs)} gives {da} != {db}"
            checked += 1
    counts = f" for C in {tuple(class_counts)}" if class_symbol is not None else ""
    return True, f"mpmath {NUMERIC_DIGITS} digits, {checked} random points{counts}"


def check_equal(
    lhs: sp.Expr,
    rhs: sp.Expr,
    *,
    step: str,
    assumptions: Iterable[Assumption] = (),
    class_symbol: sp.Symbol | None = None,
    symbolic: bool = True,
) -> Verdict:
    """Check ``lhs == rhs`` under ``assumptions``; raise ProofError naming ``step`` if it fails."""
    assumptions = tuple(assumptions)
    left = apply_assumptions(sp.sympify(lhs), assumptions)
    right = apply_assumptions(sp.sympify(rhs), assumptions)
    if symbolic and _symbolically_zero(sp.sympify(left - right)):
        return Verdict("symbolic", "SymPy reduces the difference to 0")
    holds, detail = numerically_equal(
        left, right, class_symbol=class_symbol, assumptions=assumptions
    )
    if not holds:
        raise ProofError(f"step '{step}' does not hold: {detail}")
    return Verdict("numeric", detail)


def without_expm1(expr: sp.Expr) -> sp.Expr:
    """``expr`` with expm1(u) written as exp(u) - 1 (its definition)."""
    return expr.replace(lambda e: isinstance(e, expm1), lambda e: sp.exp(e.args[0]) - 1)
