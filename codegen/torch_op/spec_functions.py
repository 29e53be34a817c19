"""The kernel spec's expressions as torch functions, printed by SymPy's lambdify.

The torch-side ops evaluate the proven row values and gradients of
:mod:`gradsmith.derive.kernel_spec` through these, never through formulas typed again.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import sympy as sp
from gradsmith.derive.kernel_spec import KernelSpec, kernel_spec
from sympy.printing.pytorch import TorchPrinter


class _SpecTorchPrinter(TorchPrinter):
    """SymPy's torch printer, with expm1 (the spec's true-class gradient uses it)."""

    def _print_expm1(self, expr: sp.Expr) -> str:
        return f"torch.expm1({self._print(expr.args[0])})"


@cache
def _lambdified(expr: sp.Expr, arguments: tuple[sp.Symbol, ...]) -> Callable:
    return sp.lambdify(arguments, expr, modules="torch", cse=True,
                       printer=_SpecTorchPrinter)


def spec_for(target_kind: str, weighted: bool, softcapped: bool) -> KernelSpec:
    return kernel_spec(target_kind, weighted, softcapped)


def torch_function(expr: sp.Expr) -> Callable[..., object]:
    """``f(**values)``: ``expr`` evaluated on torch tensors (or numbers) named by its symbols."""
    arguments = tuple(sorted(expr.free_symbols, key=lambda s: s.name))
    function = _lambdified(expr, arguments)
    names = tuple(s.name for s in arguments)

    def evaluate(**values):
        missing = [name for name in names if name not in values]
        if missing:
            raise KeyError(f"{expr} needs values for {missing}")
        return function(*(values[name] for name in names))

    return evaluate


def evaluate(expr: sp.Expr, values: dict[str, object]) -> object:
    """``expr`` at ``values`` (a name -> tensor or number mapping holding at least its symbols)."""
    return torch_function(expr)(**values)


def row_values(spec: KernelSpec, values: dict[str, object]) -> dict[str, object]:
    """Every row value of ``spec`` in order, each from the state and the values before it."""
    values = dict(values)
    for symbol, expr in spec.row_values:
        values[symbol.name] = evaluate(expr, values)
    return values
