"""From SymPy expressions to lines of code: common-subexpression elimination, then a printer.

Templates lay out what this returns; they never contain a formula themselves.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import sympy as sp
from sympy.printing.codeprinter import CodePrinter


@dataclass(frozen=True)
class PrintedCode:
    """Printed CSE temporaries (``intermediates``) and ``outputs``, in printing order;
    ``assignments`` lays them out so that each follows every name it reads."""

    intermediates: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    op_count: int
    ordered: tuple[tuple[str, str], ...] = ()

    @property
    def assignments(self) -> tuple[tuple[str, str], ...]:
        """Temporaries and outputs together, each after every name it reads."""
        return self.ordered or self.intermediates + self.outputs


def print_code(
    outputs: Sequence[tuple[str | sp.Symbol, sp.Expr]],
    printer: CodePrinter,
    *,
    temp_prefix: str = "t",
) -> PrintedCode:
    """CSE over ``outputs`` (canonical order, temporaries ``{temp_prefix}0, 1, ...``), then print.

    The result is deterministic: the same expressions print to the same text whatever the
    interpreter's hash seed.
    """
    names = [str(name) for name, _ in outputs]
    expressions = [sp.sympify(expr) for _, expr in outputs]
    temporaries = sp.numbered_symbols(temp_prefix, real=True)
    replacements, reduced = sp.cse(expressions, symbols=temporaries, order="canonical")
    intermediates = tuple((str(symbol), printer.doprint(expr)) for symbol, expr in replacements)
    printed = tuple((name, printer.doprint(expr)) for name, expr in zip(names, reduced, strict=True))
    order = _dependency_order(
        [(str(symbol), expr) for symbol, expr in replacements]
        + list(zip(names, reduced, strict=True))
    )
    text = dict(intermediates + printed)
    op_count = sum(sp.count_ops(expr) for _, expr in replacements) + sum(
        sp.count_ops(expr) for expr in reduced
    )
    return PrintedCode(
        intermediates=intermediates,
        outputs=printed,
        op_count=int(op_count),
        ordered=tuple((name, text[name]) for name in order),
    )


def _dependency_order(assignments: list[tuple[str, sp.Expr]]) -> list[str]:
    """A stable order in which each assignment follows the assignments it reads.

    Outputs may read earlier outputs (``lse`` reads ``log_sum_exp``), and CSE may build a
    temporary from such an output, so temporaries cannot simply all come first.
    """
    defined = {name for name, _ in assignments}
    reads = {
        name: {str(s) for s in expr.free_symbols} & defined - {name} for name, expr in assignments
    }
    done: list[str] = []
    pending = [name for name, _ in assignments]
    while pending:
        for name in pending:
            if reads[name] <= set(done):
                done.append(name)
                pending.remove(name)
                break
        else:
            raise ValueError(f"assignments read each other in a cycle: {', '.join(pending)}")
    return done


_IDENTIFIER = re.compile(r"(?<![\w.])([A-Za-z_]\w*)(?!\w*\s*\()")


def names_read(code: str) -> set[str]:
    """The variables a printed expression reads (not the functions it calls)."""
    return set(_IDENTIFIER.findall(code))


def check_reads(group: str, assignments: Iterable[tuple[str, str]], inputs: Iterable[str]) -> None:
    """Every name a printed assignment reads is an input or assigned before it.

    Checked on the printed text, so that a template can rely on it whatever the printer did.
    """
    known = set(inputs)
    for name, code in assignments:
        unknown = sorted(names_read(code) - known)
        if unknown:
            raise ValueError(f"group {group}: {name} = {code} reads {unknown} before assignment")
        known.add(name)


def print_expression(expr: sp.Expr, printer: CodePrinter) -> str:
    """Print one expression without CSE (for short scalar expressions)."""
    return printer.doprint(sp.sympify(expr))


def expression_hash(expressions: Iterable[sp.Basic]) -> str:
    """A content hash of SymPy expressions (their ``srepr``), stable across runs."""
    digest = hashlib.sha256()
    for expr in expressions:
        digest.update(sp.srepr(expr).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def print_piecewise(printer: CodePrinter, expr: sp.Piecewise,
                    select: Callable[[str, str, str], str]) -> str:
    """A Piecewise with a default branch as nested one-line selects, ``select(condition, value,
    otherwise)``, the first branch outermost."""
    *branches, (otherwise, last_condition) = expr.args
    if last_condition != sp.true:
        raise ValueError(f"Piecewise without a default branch cannot be printed: {expr}")
    code = printer._print(otherwise)
    for value, condition in reversed(branches):
        code = select(printer._print(condition), printer._print(value), code)
    return code
