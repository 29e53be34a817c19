"""Derivations as ordered, checked steps.

A derivation is a chain ``lhs = e_0 = e_1 = ... = e_n``: each step carries its expression,
the rule that leads to it from the one before, and the verdict of the check of that
equality.  A step is checked when it is added, so a derivation that exists is one that
holds; a step that does not hold raises :class:`ProofError` naming the derivation and step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import sympy as sp
from gradsmith.derive.check import Assumption, ProofError, Verdict, check_equal

Prepare = Callable[[sp.Basic], sp.Basic]


def _identity(expr: sp.Basic) -> sp.Basic:
    return expr


@dataclass(frozen=True)
class Step:
    """One link of the chain: ``expr`` follows from the previous expression by ``rule``."""

    expr: sp.Basic
    rule: str
    verdict: Verdict | None = None  # None for the starting expression (a definition)
    assumptions: tuple[Assumption, ...] = ()
    note: str = ""
    shown: str = ""  # LaTeX notation for ``expr`` where its expanded form would not be read

    @property
    def method(self) -> str:
        return self.verdict.method if self.verdict is not None else "definition"


@dataclass
class Derivation:
    """A checked chain of equalities for one quantity (shown as ``lhs``, a LaTeX string)."""

    name: str
    lhs: str
    steps: list[Step] = field(default_factory=list)
    classes: int | str = "symbolic"
    intro: str = ""

    @property
    def result(self) -> sp.Basic:
        return self.steps[-1].expr

    @property
    def assumptions(self) -> tuple[Assumption, ...]:
        seen: dict[str, Assumption] = {}
        for step in self.steps:
            for assumption in step.assumptions:
                seen.setdefault(assumption.name, assumption)
        return tuple(seen.values())

    @property
    def method(self) -> str:
        """``symbolic`` when SymPy decided every step, else ``numeric``."""
        methods = {step.verdict.method for step in self.steps if step.verdict is not None}
        return "numeric" if "numeric" in methods else "symbolic"


class DerivationBuilder:
    """Builds a :class:`Derivation` step by step, checking each equality as it is added.

    ``prepare`` maps a shown expression to the one that is checked: it expands notation
    (``p_i`` to its definition) and may change variables bijectively (``z_k = log e_k``,
    so that ``cancel`` decides rational identities).  ``.doit()`` is applied after it, so
    derivatives and sums are evaluated by SymPy on both sides alike.
    """

    def __init__(
        self,
        name: str,
        lhs: str,
        start: sp.Basic,
        *,
        rule: str = "definition",
        classes: int | str = "symbolic",
        class_symbol: sp.Symbol | None = None,
        prepare: Prepare = _identity,
        symbolic: bool = True,
        intro: str = "",
        assumptions: Iterable[Assumption] = (),
        shown: str = "",
    ) -> None:
        self.derivation = Derivation(name=name, lhs=lhs, classes=classes, intro=intro)
        self.assumptions: tuple[Assumption, ...] = tuple(assumptions)
        self.derivation.steps.append(
            Step(expr=start, rule=rule, assumptions=self.assumptions, shown=shown)
        )
        self.class_symbol = class_symbol
        self.prepare = prepare
        self.symbolic = symbolic

    def then(
        self,
        expr: sp.Basic,
        rule: str,
        *,
        assumptions: Iterable[Assumption] = (),
        note: str = "",
        symbolic: bool | None = None,
        shown: str = "",
    ) -> DerivationBuilder:
        """Add ``= expr`` by ``rule``; assumptions, once used, hold for the rest of the chain."""
        self.assumptions = _merge(self.assumptions, tuple(assumptions))
        index = len(self.derivation.steps)
        classes = self.derivation.classes
        where = f" (C={classes})" if isinstance(classes, int) else ""
        label = f"{self.derivation.name}{where}, step {index} ({rule})"
        verdict = self._check(self.derivation.result, expr, label, symbolic)
        self.derivation.steps.append(
            Step(expr=expr, rule=rule, verdict=verdict, assumptions=tuple(assumptions),
                 note=note, shown=shown)
        )
        return self

    def build(self) -> Derivation:
        return self.derivation

    def _check(self, before: sp.Basic, after: sp.Basic, label: str, symbolic: bool | None):
        symbolic = self.symbolic if symbolic is None else symbolic
        if symbolic and _evaluate_derivatives(before) == after:
            return Verdict("symbolic", "SymPy's derivative, unchanged")
        left = _prepared(self.prepare, before)
        right = _prepared(self.prepare, after)
        if isinstance(left, sp.MatrixBase) or isinstance(right, sp.MatrixBase):
            return _check_matrix(left, right, label, self.assumptions, self.class_symbol, symbolic)
        return check_equal(
            left,
            right,
            step=label,
            assumptions=self.assumptions,
            class_symbol=self.class_symbol,
            symbolic=symbolic,
        )


def _evaluate_derivatives(expr: sp.Basic) -> sp.Basic:
    """Evaluate an unevaluated derivative (entrywise in a matrix), and nothing else."""
    if isinstance(expr, sp.MatrixBase):
        return expr.applyfunc(_evaluate_derivatives)
    if isinstance(expr, sp.Derivative):
        return expr.doit(deep=False)
    return expr


def _merge(old: tuple[Assumption, ...], new: tuple[Assumption, ...]) -> tuple[Assumption, ...]:
    names = {a.name for a in old}
    return old + tuple(a for a in new if a.name not in names)


def _evaluated(expr: sp.Basic) -> sp.Basic:
    """doit() until nothing changes: a derivative's result may hold sums still to collapse."""
    for _ in range(4):
        done = expr.doit()
        if done == expr:
            break
        expr = done
    return expr


def _prepared(prepare: Prepare, expr: sp.Basic) -> sp.Basic:
    expr = prepare(expr)
    if isinstance(expr, sp.MatrixBase):
        return expr.applyfunc(_evaluated)
    return _evaluated(expr) if isinstance(expr, sp.Basic) else sp.sympify(expr)


def _check_matrix(left, right, label, assumptions, class_symbol, symbolic) -> Verdict:
    left, right = sp.Matrix(left), sp.Matrix(right)
    if left.shape != right.shape:
        raise ProofError(f"step '{label}' does not hold: shapes {left.shape} != {right.shape}")
    methods = set()
    for position, (a, b) in enumerate(zip(left, right, strict=True)):
        row, col = divmod(position, left.cols)
        verdict = check_equal(
            a,
            b,
            step=f"{label} [entry {row},{col}]",
            assumptions=assumptions,
            class_symbol=class_symbol,
            symbolic=symbolic,
        )
        methods.add(verdict.method)
    method = "numeric" if "numeric" in methods else "symbolic"
    entries = left.rows * left.cols
    return Verdict(method, f"each of {entries} entries checked ({method})")


def recheck(derivation: Derivation, *, prepare: Prepare = _identity,
            class_symbol: sp.Symbol | None = None) -> Derivation:
    """Check every step of an existing derivation again (for instance after it was edited)."""
    first = derivation.steps[0]
    builder = DerivationBuilder(
        derivation.name, derivation.lhs, first.expr, rule=first.rule,
        classes=derivation.classes, class_symbol=class_symbol, prepare=prepare,
        assumptions=first.assumptions, shown=first.shown,
    )
    for step in derivation.steps[1:]:
        builder.then(step.expr, step.rule, assumptions=step.assumptions, note=step.note,
                     shown=step.shown)
    return builder.build()
